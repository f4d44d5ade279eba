"""The NestedUNet against the reference fixtures, and the model's own properties."""
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_utils as pu
from mdm_jax.models import build_model, example_inputs, init_params
from mdm_jax.models import config as config_lib
from mdm_jax.reference import from_reference

FORWARD_FIXTURES = ["unet_forward", "unet_forward_lmhead", "nested_unet_forward",
                    "nested2_unet_forward"]


@functools.lru_cache(maxsize=None)
def converted(name):
    f = pu.load(name)
    return from_reference(pu.read_json(f, "config_json"), pu.state_dict(f))


def fixture_inputs(f):
    xs = [pu.nhwc(x) for x in pu.levels(f, "input/x_t")]
    micros = {k.rsplit("/", 1)[1]: f[k] for k in f.files if k.startswith("input/micros/")}
    return xs, f["input/times"], f["input/conditioning"], f["input/cond_mask"], micros


def run(model_config, params, xs, times, lm, mask, micros):
    return jax.jit(build_model(model_config).apply)({"params": params}, xs, times, lm, mask, micros)


@pytest.mark.parametrize("name", FORWARD_FIXTURES)
def test_forward_matches_reference(name):
    f = pu.load(name)
    cfg, params = converted(name)
    outputs = run(cfg, params, *fixture_inputs(f))
    want = pu.levels(f, "output")
    assert len(outputs) == len(want)
    for got, ref in zip(outputs, want):
        np.testing.assert_allclose(pu.nchw(got), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["unet_forward", "nested_unet_forward"])
@pytest.mark.slow
def test_masked_tokens_matter_only_without_masking(name):
    """The reference's own check: perturbing padded tokens changes nothing iff masked."""
    f = pu.load(name)
    cfg, params = converted(name)
    xs, times, lm, mask, micros = fixture_inputs(f)
    assert (mask == 0).any()
    perturbed = lm + 5.0 * (mask == 0)[..., None]
    a = run(cfg, params, xs, times, lm, mask, micros)[0]
    b = run(cfg, params, xs, times, perturbed, mask, micros)[0]
    change = float(jnp.abs(a - b).max())
    expected = pu.read_json(f, "meta_json")["checks"]["max_change_when_masked_tokens_perturbed"][0]
    if expected == 0.0:
        assert change == 0.0
    else:
        assert change > 1e-3


@pytest.mark.slow
def test_bfloat16_activations_stay_close_to_float32():
    """bf16 activations (params stay float32): max error <= 3% of the largest output."""
    f = pu.load("nested2_unet_forward")
    cfg, params = converted("nested2_unet_forward")
    inputs = fixture_inputs(f)
    ref = run(cfg, params, *inputs)
    bf16 = copy.deepcopy(cfg)
    bf16.dtype = "bfloat16"
    got = run(bf16, params, *inputs)
    for g, r in zip(got, ref):
        assert g.dtype == jnp.float32
        assert float(jnp.abs(g - r).max()) <= 3e-2 * float(jnp.abs(r).max())
        assert float(jnp.sqrt(jnp.mean((g - r) ** 2))) <= 3e-2 * float(jnp.std(r))
        assert float(jnp.abs(g - r).max()) > 0  # really ran in bf16


def test_conversion_of_config_only():
    f = pu.load("nested2_unet_forward")
    cfg, params = from_reference(pu.read_json(f, "config_json"), None)
    assert params is None
    assert config_lib.nest_scales(cfg) == [4, 2, 1]
    # The outer projection sets the width the innermost lm_proj takes (README 4.1).
    assert cfg.conditioning_feature_dim == 32 and cfg.conditioning_feature_proj_dim == 32
    assert not cfg.masked_cross_attention  # the innermost level decides
    assert cfg.unet.skip_normalization and not cfg.unet.inner.skip_normalization


def _state_dict(name):
    return pu.state_dict(pu.load(name))


def test_conversion_rejects_missing_key():
    ref_cfg = pu.read_json(pu.load("nested_unet_forward"), "config_json")
    sd = _state_dict("nested_unet_forward")
    del sd["inner_unet.down_blocks.1.attn.0.kv_cond.weight"]
    with pytest.raises(ValueError, match=r"inner_unet\.down_blocks\.1\.attn\.0\.kv_cond\.weight"):
        from_reference(ref_cfg, sd)


def test_conversion_rejects_extra_key():
    ref_cfg = pu.read_json(pu.load("nested_unet_forward"), "config_json")
    sd = _state_dict("nested_unet_forward")
    sd["inner_unet.interp_layer1.weight"] = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"inner_unet\.interp_layer1\.weight"):
        from_reference(ref_cfg, sd)


def test_conversion_rejects_wrong_shape():
    ref_cfg = pu.read_json(pu.load("unet_forward"), "config_json")
    sd = _state_dict("unet_forward")
    sd["up_blocks.0.resnets.1.conv1.weight"] = np.zeros((64, 64, 3, 1), np.float32)
    with pytest.raises(ValueError, match=r"up_blocks\.0\.resnets\.1\.conv1\.weight.*shape"):
        from_reference(ref_cfg, sd)


def test_conversion_rejects_unsupported_reference_options():
    ref_cfg = pu.read_json(pu.load("unet_forward"), "config_json")
    ref_cfg["temporal_mode"] = True
    with pytest.raises(ValueError, match="temporal_mode"):
        from_reference(ref_cfg, None)


def small_nested_config(**overrides):
    inner = config_lib.level_config(
        resolution_channels=[32, 32], num_resnets_per_resolution=[1, 1], attention_levels=[1],
        num_attention_layers=[0, 1], temporal_dim=64, num_groups_norm=8,
        micro_conditioning="scale:16")
    outer = config_lib.level_config(
        resolution_channels=[16, 32], num_resnets_per_resolution=[1, 1],
        num_attention_layers=[0, 0], temporal_dim=64, num_groups_norm=8, skip_mid_blocks=True,
        micro_conditioning="scale:32")
    outer.inner = inner
    return config_lib.model_config(outer, **overrides)


@pytest.mark.slow
def test_fresh_nested_model_keeps_inner_output_unchanged_by_outer_layers():
    """Zero-initialised adapters: the outer level does not disturb the inner output at init."""
    cfg = small_nested_config(num_classes=5)
    params = init_params(cfg, jax.random.key(0), 32)
    model = build_model(cfg)
    xs, kwargs = example_inputs(cfg, 32, batch_size=2)
    xs = [jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(xs)]
    kwargs["class_labels"] = jnp.array([1, 3])
    out = jax.jit(model.apply)({"params": params}, xs, **kwargs)
    inner_model = build_model(config_lib.model_config(cfg.unet.inner, num_classes=5))
    alone = jax.jit(inner_model.apply)({"params": params["inner_unet"]}, xs[1:], **kwargs)
    np.testing.assert_allclose(out[1], alone[0], rtol=1e-6, atol=1e-6)
    # conv_out starts at zero, so every level predicts 0 at init...
    assert float(jnp.abs(out[0]).max()) == 0.0


@pytest.mark.slow
def test_remat_levels_keep_params_outputs_and_gradients():
    """Rematerialising a level (config `remat`) recomputes activations in the backward
    pass: the same parameter tree, and the plain model's loss and gradients."""
    plain = small_nested_config(num_classes=5)
    rematted = copy.deepcopy(plain)
    rematted.unet.remat = rematted.unet.inner.remat = True
    params = init_params(plain, jax.random.key(0), 32)
    # Non-zero output convs and adapters, so that every layer gets a gradient.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
    assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        jax.eval_shape(lambda: init_params(rematted, jax.random.key(0), 32))))
    xs, kwargs = example_inputs(plain, 32, batch_size=2)
    xs = [jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(xs)]
    kwargs["class_labels"] = jnp.array([1, 3])

    def loss_and_grads(cfg):
        model = build_model(cfg)
        def loss(p):
            return sum(jnp.sum(jnp.sin(o)) for o in model.apply({"params": p}, xs, **kwargs))
        return jax.jit(jax.value_and_grad(loss))(params)

    def checkpointed_blocks(cfg):
        model = build_model(cfg)
        jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, xs, **kwargs))(params)
        return str(jaxpr).count("remat2[")
    assert checkpointed_blocks(plain) == 0 and checkpointed_blocks(rematted) > 0
    (loss0, grads0), (loss1, grads1) = loss_and_grads(plain), loss_and_grads(rematted)
    np.testing.assert_allclose(loss0, loss1, rtol=1e-6)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads0))
    # Recomputed activations are summed in another order: float32 rounding apart, against
    # each gradient's own scale.
    for a, b in zip(jax.tree_util.tree_leaves(grads0), jax.tree_util.tree_leaves(grads1)):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(a).max())


def test_class_labels_condition_the_output_and_minus_one_is_the_null_label():
    cfg = small_nested_config(num_classes=5)
    params = init_params(cfg, jax.random.key(0), 32)
    # ...so give the output layers weights to make the labels visible.
    rng = np.random.default_rng(0)  # numpy: one jax.random call a shape would compile each
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: rng.normal(0, 0.1, v.shape).astype(v.dtype)
        if "conv_out" in jax.tree_util.keystr(p) or "adapter" in jax.tree_util.keystr(p)
        or "conv2" in jax.tree_util.keystr(p) else v, params)
    apply = jax.jit(build_model(cfg).apply)
    xs, kwargs = example_inputs(cfg, 32, batch_size=1)

    def out(label):
        return apply({"params": params}, xs, **{**kwargs, "class_labels": jnp.array([label])})
    assert float(jnp.abs(out(1)[1] - out(2)[1]).max()) > 1e-4
    np.testing.assert_array_equal(out(-1)[0], out(5)[0])


def test_factored_labels_sum_one_embedding_per_attribute():
    """class_factors=(2, 3): label 3a + b embeds as (table0[a] + table1[b]) / sqrt(2), so
    labels sharing an attribute share its row; -1 and num_classes take both null rows."""
    cfg = small_nested_config(num_classes=6)
    cfg.class_factors = (2, 3)
    config_lib.validate(cfg)
    model = build_model(cfg)
    params = init_params(cfg, jax.random.key(0), 32)
    inner = params["inner_unet"]
    assert "class_emb" not in inner
    table0 = inner["class_factor_embs_0"]["embedding"]
    table1 = inner["class_factor_embs_1"]["embedding"]
    assert table0.shape[0] == 3 and table1.shape[0] == 4  # each with its null row

    def embedding(labels):
        cond = model.apply({"params": params}, None, None, jnp.array(labels),
                           method=lambda m, *a: m.condition(*a))
        return np.asarray(cond.embedding)
    got = embedding([0, 4, 5, -1, 6])
    want = np.stack([table0[0] + table1[0], table0[1] + table1[1], table0[1] + table1[2],
                     table0[2] + table1[3], table0[2] + table1[3]]) / np.sqrt(2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_class_factors_must_multiply_to_the_classes():
    cfg = small_nested_config(num_classes=6)
    cfg.class_factors = (2, 4)
    with pytest.raises(ValueError, match="class_factors"):
        config_lib.validate(cfg)


@pytest.mark.slow
def test_mixed_batch_outer_rows_match_full_batch():
    """With fewer high-resolution rows, those rows compute exactly what a full batch does."""
    f = pu.load("nested_unet_forward")
    cfg, params = converted("nested_unet_forward")
    xs, times, lm, mask, micros = fixture_inputs(f)
    full = run(cfg, params, xs, times, lm, mask, micros)
    part = run(cfg, params, [xs[0][:1], xs[1]], times, lm, mask, micros)
    assert part[0].shape[0] == 1 and part[1].shape[0] == 2
    np.testing.assert_allclose(part[0], full[0][:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(part[1][:1], full[1][:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(dtype="float64"), "model.dtype"),
    (dict(attention_impl="flash"), "attention_impl"),
])
def test_validate_names_the_bad_value(change, message):
    cfg = small_nested_config()
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(cfg)


def test_validate_rejects_mismatched_lists_and_unknown_keys():
    cfg = small_nested_config()
    cfg.unet.inner.num_attention_layers = [0]
    with pytest.raises(ValueError, match=r"model\.unet\.inner\.num_attention_layers"):
        config_lib.validate(cfg)
    with pytest.raises(ValueError, match="Unknown model config key 'resolution'"):
        config_lib.level_config(resolution=64)
    with pytest.raises(ValueError, match="must be divisible by 4: the nest ratio 2"):
        config_lib.level_sizes(small_nested_config(), 30)


def test_identical_layers_are_traced_once(monkeypatch):
    """ResNets and attention layers are jitted per layer: layers of the same shapes share
    one trace (the 64² UNet's 25 attention layers at 16² trace as one), and a model of
    three identical attention layers per ResNet computes what it did traced three times."""
    from mdm_jax.models import layers
    calls = []
    original = layers.attend
    monkeypatch.setattr(layers, "attend", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = small_nested_config()
    cfg.unet.inner.num_attention_layers = [0, 3]  # two ResNets, three layers after each
    params = init_params(cfg, jax.random.key(0), 32)
    xs, kwargs = example_inputs(cfg, 32, batch_size=2)
    model = build_model(cfg)
    jax.clear_caches()
    calls.clear()
    jax.make_jaxpr(lambda p: model.apply({"params": p}, xs, **kwargs))(params)
    layers_in_model = sum(1 for path in jax.tree_util.tree_flatten_with_path(params)[0]
                          if "attn_" in jax.tree_util.keystr(path[0]) and
                          jax.tree_util.keystr(path[0]).endswith("['qkv']['kernel']"))
    assert layers_in_model > 3
    # Each trace of a layer attends once over pixels (and once over text if present); the
    # down path's and the up path's layers differ only in where they sit.
    traces = len(calls) // (2 if kwargs.get("lm_outputs") is not None else 1)
    assert traces == 1, (traces, layers_in_model)
