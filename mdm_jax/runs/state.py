"""The train state, the optimizer, its learning-rate schedule and the EMA update.

`mdm_jax.parallel.sharding.create_sharded` materialises a state on the mesh.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


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


def ema_update(ema, params, decay, step):
    """EMA with the usual warmup, min(decay, (1 + step) / (10 + step)), so early EMA moves."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
