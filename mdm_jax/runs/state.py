"""The train state, the optimizer, its learning-rate schedule and the EMA update.

`create_state` materialises a state on the mesh around params that are already there.
"""
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from mdm_jax.parallel import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array              # optimizer steps taken (skipped non-finite steps too)
    params: Any                  # {'unet': ..., and any trainable text encoder}
    ema_params: Any
    opt_state: Any
    nonfinite_steps: jax.Array   # steps whose update was skipped for a non-finite loss


def learning_rate_schedule(learning_rate, warmup_steps):
    """Linear warmup from 0, then constant (as the reference trains)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.constant_schedule(learning_rate)], [warmup_steps])


class ClippedOptimizer(NamedTuple):
    """Global-norm clipping, then `inner`: init and update are the optax chain's (whole
    trees); training/update.py runs `inner` leaf by leaf with the clipping it names."""
    init: Callable
    update: Callable
    clip_norm: float
    inner: optax.GradientTransformation


def make_optimizer(optimizer_config, learning_rate, warmup_steps):
    """Global-norm clipping, then AdamW with the warmup schedule."""
    inner = optax.adamw(learning_rate_schedule(learning_rate, warmup_steps),
                        b1=optimizer_config.b1, b2=optimizer_config.b2,
                        eps=optimizer_config.eps, weight_decay=optimizer_config.weight_decay)
    chain = optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), inner)
    return ClippedOptimizer(chain.init, chain.update, optimizer_config.grad_clip_norm, inner)


def state_from_params(params, optimizer):
    """A fresh state around `params` (boxed or not: boxes carry through to the moments)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=optimizer.init(params),
                      nonfinite_steps=jnp.zeros((), jnp.int32))


def create_state(abstract_params, params, ema_params, optimizer, mesh, rules):
    """(state, shardings): a fresh TrainState on `mesh` around `params` and `ema_params`
    (sharded trees shaped as `abstract_params`, a boxed `jax.eval_shape` of them whose
    logical axis names say how every part of the state is laid out)."""
    abstract = jax.eval_shape(lambda p: state_from_params(p, optimizer), abstract_params)
    shardings = sharding.tree_shardings(abstract, mesh, rules)

    def build(params, ema_params):
        # A copy of the EMA: it must not be the params' own buffers (the step donates both).
        return state_from_params(params, optimizer).replace(
            ema_params=jax.tree_util.tree_map(jnp.copy, ema_params))
    return jax.jit(build, out_shardings=shardings)(params, ema_params), shardings


def ema_update(ema, params, decay, step):
    """EMA with the usual warmup, min(decay, (1 + step) / (10 + step)), so early EMA moves."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
