"""The train state, the optimizer, and creating both sharded without a host copy.

The state is built abstractly first (`jax.eval_shape`), its shardings derived from the
parameters' logical axis names, then materialised by a jitted init whose out_shardings
write every shard on the device that owns it: no device ever holds the whole model.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mdm_jax.train import sharding as sharding_lib


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


def make_optimizer(optimizer_config, learning_rate, warmup_steps):
    """Global-norm clipping, then AdamW with the warmup schedule."""
    return optax.chain(
        optax.clip_by_global_norm(optimizer_config.grad_clip_norm),
        optax.adamw(learning_rate_schedule(learning_rate, warmup_steps),
                    b1=optimizer_config.b1, b2=optimizer_config.b2, eps=optimizer_config.eps,
                    weight_decay=optimizer_config.weight_decay))


def state_from_params(params, optimizer):
    """A fresh state around `params` (boxed or not: boxes carry through to the moments)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=optimizer.init(params),
                      nonfinite_steps=jnp.zeros((), jnp.int32))


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


def create_sharded(make_boxed, mesh, rules, *args):
    """Runs `make_boxed(*args)` (a pytree with logically boxed leaves) sharded.

    Returns (tree, shardings): the unboxed tree, each leaf made on the devices that own
    it, and the matching NamedSharding tree (the train step's state shardings).
    """
    abstract = jax.eval_shape(make_boxed, *args)
    shardings = sharding_lib.tree_shardings(abstract, mesh, rules)
    tree = jax.jit(lambda *a: nn.unbox(make_boxed(*a)), out_shardings=shardings)(*args)
    return tree, shardings


def abstract_with_shardings(make_boxed, mesh, rules):
    """ShapeDtypeStructs carrying shardings: a restore target that writes onto `mesh`."""
    abstract = jax.eval_shape(make_boxed)
    shardings = sharding_lib.tree_shardings(abstract, mesh, rules)
    unboxed = jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, abstract,
                                     is_leaf=_is_box)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)


def ema_update(ema, params, decay, step):
    """EMA with the usual warmup, min(decay, (1 + step) / (10 + step)), so early EMA moves."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
