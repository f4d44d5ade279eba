"""The fused GroupNorm (mdm_jax/models/group_norm.py) against flax's GroupNorm and
autodiff: the same forward, the same gradients, fewer saved residuals."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from mdm_jax.models import build_model, layers, presets
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


def _small_nested_model(fused, dtype):
    config = presets.cc12m_256()
    outer, inner = config.unet, config.unet.inner
    outer.resolution_channels, outer.num_resnets_per_resolution = [32, 64], [1, 1]
    outer.num_attention_layers = [0, 0]
    inner.resolution_channels, inner.num_attention_layers = [32, 64, 64], [0, 1, 1]
    outer.temporal_dim = inner.temporal_dim = 64
    outer.num_groups_norm = inner.num_groups_norm = 8
    config.conditioning_feature_dim = config.conditioning_feature_proj_dim = 32
    config.dtype, config.fused_norms = dtype, fused
    return build_model(config)


def test_nested_model_is_the_same_function_with_fused_norms():
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, s, s, 3)), jnp.float32) for s in (64, 32)]
    times = jnp.array([10, 500])
    text = jnp.asarray(rng.normal(size=(2, 8, 32)), jnp.float32)
    mask = jnp.ones((2, 8), jnp.int32)
    params = _small_nested_model(False, "float32").init(
        jax.random.PRNGKey(0), xs, times, text, mask)["params"]
    # Move the zero-initialised layers off zero so every path carries gradient.
    params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(1),
                                                                  p.shape), params)

    def loss_and_grads(fused, dtype):
        model = _small_nested_model(fused, dtype)
        loss = lambda p: sum(jnp.mean(o ** 2) for o in model.apply({"params": p}, xs, times,
                                                                     text, mask))
        return jax.value_and_grad(loss)(params)

    def distances(grads, reference):
        return jax.tree.leaves(jax.tree.map(
            lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12)),
            grads, reference))

    loss_plain, grads_plain = loss_and_grads(False, "float32")
    loss_fused, grads_fused = loss_and_grads(True, "float32")
    assert jax.tree.structure(grads_fused) == jax.tree.structure(grads_plain)
    assert float(loss_fused) == pytest.approx(float(loss_plain), rel=1e-6)
    assert max(distances(grads_fused, grads_plain)) < 1e-5
    # In bf16 both are as far from the float32 gradients as bf16 rounding puts them.
    bf16 = {fused: loss_and_grads(fused, "bfloat16") for fused in (False, True)}
    assert float(bf16[True][0]) == pytest.approx(float(bf16[False][0]), rel=1e-3)
    plain_error = np.median(distances(bf16[False][1], grads_plain))
    fused_error = np.median(distances(bf16[True][1], grads_plain))
    assert fused_error < 1.5 * plain_error
