"""The fused GroupNorm (mdm_jax/models/group_norm.py) against flax's GroupNorm and
autodiff: the same forward, the same gradients, fewer saved residuals."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from mdm_jax.models import layers
from mdm_jax.models.group_norm import group_norm_act


def _flax(x, scale, bias, mod_scale, mod_shift, activate, dtype):
    y = nn.GroupNorm(num_groups=8, epsilon=layers.NORM_EPS, dtype=jnp.float32).apply(
        {"params": {"scale": scale, "bias": bias}}, x)
    if mod_scale is not None:
        per_example = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        y = y * (1 + mod_scale.reshape(per_example)) + mod_shift.reshape(per_example)
    return (nn.silu(y) if activate else y).astype(dtype)


@pytest.mark.parametrize("shape", [(3, 6, 5, 32), (2, 7, 32)])
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("activate", [False, True])
def test_forward_and_gradients_equal_flax_group_norm(shape, modulated, activate):
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    x = 2 * jax.random.normal(keys[0], shape) + 0.5
    scale = 1 + 0.1 * jax.random.normal(keys[1], shape[-1:])
    bias = 0.1 * jax.random.normal(keys[2], shape[-1:])
    mods = ((0.3 * jax.random.normal(keys[3], (shape[0], shape[-1])),
             0.3 * jax.random.normal(keys[4], (shape[0], shape[-1]))) if modulated
            else (None, None))
    weights = jax.random.normal(keys[5], shape)

    def loss(fn):
        return lambda *args: jnp.sum(fn(*args) * weights)

    fused = loss(lambda *a: group_norm_act(*a, 8, layers.NORM_EPS, activate, jnp.float32))
    plain = loss(lambda *a: _flax(*a, activate, jnp.float32))
    argnums = (0, 1, 2, 3, 4) if modulated else (0, 1, 2)
    value, grads = jax.value_and_grad(fused, argnums)(x, scale, bias, *mods)
    value_ref, grads_ref = jax.value_and_grad(plain, argnums)(x, scale, bias, *mods)
    assert value == value_ref
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=2e-5, atol=2e-5)


def test_bf16_forward_is_flax_s_exactly():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 32), jnp.bfloat16)
    scale, bias = jnp.full((32,), 1.5), jnp.full((32,), 0.25)
    mod = jnp.linspace(-0.5, 0.5, 64, dtype=jnp.bfloat16).reshape(2, 32)
    out = group_norm_act(x, scale, bias, mod, -mod, 8, layers.NORM_EPS, True, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, _flax(x, scale, bias, mod, -mod, True, jnp.bfloat16))


def test_resnet_keeps_a_quarter_of_the_residuals():
    x = jnp.ones((2, 16, 16, 64), jnp.bfloat16)
    temb = jnp.ones((2, 32), jnp.bfloat16)
    saved = {}
    for fused in (False, True):
        block = layers.ResNet(64, 32, 0.0, jnp.bfloat16, fused)
        params = block.init(jax.random.PRNGKey(0), x, temb)
        residuals = saved_residuals(
            lambda p, x: block.apply(p, x, temb).astype(jnp.float32).sum(), params, x)
        saved[fused] = sum(np.prod(a.shape) * a.dtype.itemsize for a, _ in residuals)
    # flax's GroupNorm keeps float32 copies (centred input, pre-activation, SiLU's input).
    assert saved[True] * 4 < saved[False]
