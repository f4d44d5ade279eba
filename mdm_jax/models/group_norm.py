"""GroupNorm, optionally followed by a per-example scale and shift and by SiLU, as one
function with a hand-written backward pass.

Autodiff of `silu(group_norm(x) * (1 + s) + t)` keeps float32 copies of the centred
input and of the pre-activation for the backward pass: 8 bytes per element beside the
bf16 input, written in the forward and read back in the backward. This version keeps
only the input and the per-group statistics, and recomputes the rest in the backward:
one reduction pass (two sums per example and channel) and one elementwise pass. The
forward computes what flax.linen.GroupNorm computes (float32 statistics, the fast
variance E[x^2] - E[x]^2 clipped at 0, then (x - mean) * (rsqrt(var + eps) * scale) +
bias).
"""
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models.initializers import ONES, ZEROS, partitioned


def _rows(x):
    """x [B, ..., C] as [B, S, C] (no -1: B may be 0 under a mixed ratio)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])


def _per_channel(stat, channels):
    """[B, G] group statistics -> [B, 1, C], each channel taking its group's."""
    groups = stat.shape[-1]
    return jnp.repeat(stat, channels // groups, axis=-1)[:, None, :]


def _gain(mod_scale):
    """1 + mod_scale as [B, 1, C] float32; the sum is rounded in mod_scale's dtype, as the
    unfused `norm(x) * (1 + scale)` of bf16 scales does."""
    return (1 + mod_scale)[:, None, :].astype(jnp.float32)


def _statistics(x32, groups, eps):
    """Mean and 1 / std per example and group of x32 [B, S, C]."""
    b, s, c = x32.shape
    grouped = x32.reshape(b, s, groups, c // groups)
    mean = grouped.mean(axis=(1, 3))
    mean_sq = jnp.square(grouped).mean(axis=(1, 3))
    var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
    return mean, jax.lax.rsqrt(var + eps)


def _forward(x, scale, bias, mod_scale, mod_shift, groups, eps, activate, out_dtype):
    """x [B, ..., C] -> the output and what the backward pass needs."""
    shape = x.shape
    x32 = _rows(x).astype(jnp.float32)
    mean, inv_std = _statistics(x32, groups, eps)
    c = shape[-1]
    centred = x32 - _per_channel(mean, c)
    y = centred * (_per_channel(inv_std, c) * scale) + bias
    if mod_scale is not None:
        y = y * _gain(mod_scale) + mod_shift[:, None, :].astype(jnp.float32)
    out = nn.silu(y) if activate else y
    return out.astype(out_dtype).reshape(shape), (x, mean, inv_std)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def group_norm_act(x, scale, bias, mod_scale, mod_shift, groups, eps, activate, out_dtype):
    """GroupNorm of x [B, ..., C] (channels last), times (1 + mod_scale) plus mod_shift
    ([B, C] each, or both None), then SiLU if `activate`; returned in `out_dtype`."""
    return _forward(x, scale, bias, mod_scale, mod_shift, groups, eps, activate,
                    out_dtype)[0]


def _fwd(x, scale, bias, mod_scale, mod_shift, groups, eps, activate, out_dtype):
    out, (x, mean, inv_std) = _forward(x, scale, bias, mod_scale, mod_shift, groups, eps,
                                       activate, out_dtype)
    return out, (x, mean, inv_std, scale, bias, mod_scale, mod_shift)


def _bwd(groups, eps, activate, out_dtype, residuals, g):
    del eps, out_dtype
    x, mean, inv_std, scale, bias, mod_scale, mod_shift = residuals
    shape, c = x.shape, x.shape[-1]
    x32 = _rows(x).astype(jnp.float32)
    g32 = g.reshape(x32.shape).astype(jnp.float32)
    inv_std_c = _per_channel(inv_std, c)
    centred = x32 - _per_channel(mean, c)
    a = inv_std_c * scale  # [B, 1, C]: y0 = centred * a + bias is the GroupNorm's output
    gain = 1.0 if mod_scale is None else _gain(mod_scale)
    dy = g32
    if activate:
        y = centred * (a * gain) + bias * gain
        if mod_shift is not None:
            y = y + mod_shift[:, None, :].astype(jnp.float32)
        sig = jax.nn.sigmoid(y)
        dy = g32 * sig * (1 + y * (1 - sig))
    # The only two full passes' worth of sums: per example and channel.
    sum_dy = dy.sum(axis=1, keepdims=True)             # [B, 1, C]
    sum_dy_centred = (dy * centred).sum(axis=1, keepdims=True)
    d_mod_scale = d_mod_shift = None
    if mod_scale is not None:
        d_mod_shift = sum_dy[:, 0].astype(mod_shift.dtype)
        d_mod_scale = (a * sum_dy_centred + bias * sum_dy)[:, 0].astype(mod_scale.dtype)
    s1 = gain * sum_dy               # sums of the GroupNorm output's cotangent
    s2 = gain * sum_dy_centred
    d_bias = s1.sum(axis=(0, 1))
    d_scale = (s2 * inv_std_c).sum(axis=(0, 1))
    # dx = inv_std * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)), dxhat = dy0 * scale.
    b, n = x32.shape[0], x32.shape[1] * (c // groups)
    mean_dxhat = (scale * s1).reshape(b, groups, c // groups).sum(-1) / n
    mean_dxhat_xhat = (scale * s2).reshape(b, groups, c // groups).sum(-1) * inv_std / n
    dx = inv_std_c * (dy * gain * scale - _per_channel(mean_dxhat, c)
                      - centred * inv_std_c * _per_channel(mean_dxhat_xhat, c))
    return (dx.astype(x.dtype).reshape(shape), d_scale.astype(scale.dtype),
            d_bias.astype(bias.dtype), d_mod_scale, d_mod_shift)


group_norm_act.defvjp(_fwd, _bwd)


class GroupNorm(nn.Module):
    """flax.linen.GroupNorm's parameters ('scale', 'bias') and forward, with the modulation
    and activation of `group_norm_act` fused in and its lighter backward pass."""
    num_groups: int
    epsilon: float
    activate: bool = False
    out_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mod_scale: Optional[jax.Array] = None,
                 mod_shift: Optional[jax.Array] = None):
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {self.num_groups} groups do not divide {c} channels.")
        scale = self.param("scale", partitioned(ONES, ("norm",)), (c,), jnp.float32)
        bias = self.param("bias", partitioned(ZEROS, ("norm",)), (c,), jnp.float32)
        return group_norm_act(x, scale, bias, mod_scale, mod_shift, self.num_groups,
                              self.epsilon, self.activate, jnp.dtype(self.out_dtype))
