"""The model's fast paths (settings of config.model, on by default) compute the plain
path's function: the fused GroupNorm (models/group_norm.py) and the sub-pixel up conv
(models/upsample.py), each against its plain path in a small nested text model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.models import build_model, layers, presets, upsample


def test_upsample_conv_is_upsampling_then_the_3x3_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), jnp.float32)
    conv = layers.conv3x3(4, None, jnp.float32)
    params = conv.init(jax.random.PRNGKey(0), jnp.zeros((2, 10, 14, 6)))
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    plain = conv.apply(params, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    fast = upsample.UpsampleConv(4).apply(params, x)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
    # The same parameter tree, initialised alike: checkpoints don't see the difference.
    fresh = upsample.UpsampleConv(4).init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, params)


def test_upsample_conv_flops_are_under_half():
    x = jnp.zeros((1, 16, 16, 64), jnp.bfloat16)
    kernel, bias = jnp.zeros((3, 3, 64, 64)), jnp.zeros((64,))
    flops = lambda f, *a: jax.jit(f).lower(*a).compile().cost_analysis()["flops"]
    plain = flops(lambda x, k: jax.lax.conv_general_dilated(
        jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), k.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), x, kernel)
    fast = flops(upsample.upsample_conv, x, kernel, bias)
    assert fast < 0.52 * plain


def _small_nested_model(dtype, **settings):
    config = presets.cc12m_256()
    outer, inner = config.unet, config.unet.inner
    outer.resolution_channels, outer.num_resnets_per_resolution = [32, 64], [1, 1]
    outer.num_attention_layers = [0, 0]
    inner.resolution_channels, inner.num_attention_layers = [32, 64, 64], [0, 1, 1]
    outer.temporal_dim = inner.temporal_dim = 64
    outer.num_groups_norm = inner.num_groups_norm = 8
    config.conditioning_feature_dim = config.conditioning_feature_proj_dim = 32
    config.dtype = dtype
    config.update(settings)
    return build_model(config)


@pytest.mark.parametrize("setting", ["fused_norms", "subpixel_upsample"])
def test_nested_model_is_the_same_function_on_the_fast_path(setting):
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, s, s, 3)), jnp.float32) for s in (64, 32)]
    times = jnp.array([10, 500])
    text = jnp.asarray(rng.normal(size=(2, 8, 32)), jnp.float32)
    mask = jnp.ones((2, 8), jnp.int32)
    params = _small_nested_model("float32", **{setting: False}).init(
        jax.random.PRNGKey(0), xs, times, text, mask)["params"]
    # Move the zero-initialised layers off zero so every path carries gradient.
    params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(1),
                                                                  p.shape), params)

    def loss_and_grads(fast, dtype):
        model = _small_nested_model(dtype, **{setting: fast})
        loss = lambda p: sum(jnp.mean(o ** 2) for o in model.apply({"params": p}, xs, times,
                                                                     text, mask))
        return jax.value_and_grad(loss)(params)

    def distances(grads, reference):
        return jax.tree.leaves(jax.tree.map(
            lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12)),
            grads, reference))

    loss_plain, grads_plain = loss_and_grads(False, "float32")
    loss_fast, grads_fast = loss_and_grads(True, "float32")
    assert jax.tree.structure(grads_fast) == jax.tree.structure(grads_plain)
    assert float(loss_fast) == pytest.approx(float(loss_plain), rel=1e-6)
    assert max(distances(grads_fast, grads_plain)) < 1e-5
    # In bf16 both are as far from the float32 gradients as bf16 rounding puts them.
    bf16 = {fast: loss_and_grads(fast, "bfloat16") for fast in (False, True)}
    assert float(bf16[True][0]) == pytest.approx(float(bf16[False][0]), rel=1e-3)
    plain_error = np.median(distances(bf16[False][1], grads_plain))
    fast_error = np.median(distances(bf16[True][1], grads_plain))
    assert fast_error < 1.5 * plain_error
