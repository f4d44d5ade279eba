"""The sharded train step: equal to one device (also accumulated), compiled once, compiled
ahead of its state, guarded against NaN; growth."""
import collections
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import diffusion
from mdm_jax.models import build_model, init_params
from mdm_jax.models import config as config_lib
from mdm_jax.models.rows import first_rows, pad_rows
from mdm_jax.parallel import sharding
from mdm_jax.runs import growth
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.defaults import base_config
from mdm_jax.runs.stages import stage_model_config
from mdm_jax.training.ahead import CompileAhead
from mdm_jax.training.step import make_train_step

IMAGE = 16


def tiny_model(num_classes=4):
    inner = config_lib.level_config(
        resolution_channels=[32, 32], num_resnets_per_resolution=[1, 1], attention_levels=[1],
        num_attention_layers=[0, 1], temporal_dim=32, num_groups_norm=8,
        micro_conditioning="scale:8")
    outer = config_lib.level_config(
        resolution_channels=[8, 16], num_resnets_per_resolution=[1, 1],
        num_attention_layers=[0, 0], temporal_dim=32, num_groups_norm=4,
        skip_mid_blocks=True, micro_conditioning="scale:16")
    outer.inner = inner
    return config_lib.model_config(outer, num_classes=num_classes)


def make_batch(batch_size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(-1, 1, (batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
            "labels": rng.integers(-1, 4, (batch_size,)).astype(np.int32),
            "scale": np.full((batch_size,), 16.0, np.float32)}


def setup_step(model_cfg, mesh, mixed_ratio=None, gradient_accumulation_steps=1, batch_shards=1):
    cfg = base_config()
    diff = diffusion.DiffusionConfig(multi_res_weights=(4.0, 1.0), mixed_ratio=mixed_ratio)
    optimizer = state_lib.make_optimizer(cfg.optimizer, 1e-3, 2)
    lr_fn = state_lib.learning_rate_schedule(1e-3, 2)
    rules = sharding.DEFAULT_RULES
    abstract = jax.eval_shape(
        lambda: {"unet": init_params(model_cfg, jax.random.key(0), IMAGE, boxed=True)})
    params = sharding.create_leafwise(abstract, mesh, rules, seed=0)
    state, shardings = state_lib.create_state(abstract, params, params, optimizer, mesh, rules)
    step = make_train_step(build_model(model_cfg), diff, config_lib.nest_scales(model_cfg),
                           optimizer, lr_fn, ema_decay=0.99,
                           gradient_accumulation_steps=gradient_accumulation_steps,
                           batch_shards=batch_shards)
    jitted = jax.jit(step, donate_argnums=0,
                     out_shardings=(shardings, sharding.replicated(mesh)))
    return state, jitted


def put_batch(batch, mesh):
    spec = sharding.batch_sharding(mesh, 1)
    return {k: jax.device_put(v, spec) for k, v in batch.items()}


def test_mesh_from_config_names_the_fix():
    assert sharding.mesh_shape({"data": -1, "fsdp": 4}, 8) == (2, 4)
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
    # Configs saved before the tensor axis was dropped still load; asking for it does not.
    assert sharding.mesh_shape({"data": -1, "fsdp": 4, "tensor": 1}, 8) == (2, 4)
    with pytest.raises(ValueError, match="tensor parallelism is not implemented"):
        sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8)


@pytest.mark.slow
def test_sharded_accumulated_step_equals_one_device_compiles_once_and_skips_nans():
    """float32, a mixed-ratio batch of 32: one step on one device, against the same step on
    a 2x4 data x fsdp mesh as 2 accumulated micro-batches (loss, gradient norm, level
    errors, updated params); then that step runs on without recompiling and skips a
    non-finite batch's update. The one device sees the batch as the mesh's 8 x 2 row
    groups, so that the mixed ratio picks the same rows."""
    mixed_ratio = (1.0, 1.0)
    batch = make_batch(batch_size=32)
    rng = jax.random.key(7)
    one = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    state, step = setup_step(tiny_model(), one, mixed_ratio, batch_shards=16)
    state, m1 = step(state, put_batch(batch, one), rng)
    p1 = jax.device_get(state.params)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    state, step = setup_step(tiny_model(), mesh, mixed_ratio, gradient_accumulation_steps=2,
                              batch_shards=sharding.batch_shards(mesh))
    kernel = state.params["unet"]["inner_unet"]["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 32, 8)
    # A dimension the mesh doesn't divide stays whole (3 output channels over fsdp=4).
    conv_out = state.params["unet"]["conv_out"]["kernel"]
    assert conv_out.sharding.spec == jax.sharding.PartitionSpec(None, None, None, None)
    state, m8 = step(state, put_batch(batch, mesh), rng)
    for key in ("loss", "grad_norm", "mse_level0", "mse_level1"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree_util.tree_leaves(p1),
                    jax.tree_util.tree_leaves(jax.device_get(state.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    traces = []
    for i in range(2):
        state, _ = step(state, put_batch(make_batch(32, seed=i), mesh), jax.random.key(i))
        traces.append(step._cache_size())
    assert traces == [1, 1]
    before = jax.device_get(state.params)
    bad = make_batch(32, seed=9)
    bad["images"][0, 0, 0, 0] = np.nan
    state, metrics = step(state, put_batch(bad, mesh), jax.random.key(9))
    assert int(metrics["nonfinite_steps"]) == 1 and int(state.step) == 4
    for a, b in zip(jax.tree_util.tree_leaves(before),
                    jax.tree_util.tree_leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(a, b)
    assert step._cache_size() == 1


@pytest.mark.slow
def test_step_compiled_ahead_of_its_state_is_not_compiled_again():
    """As the trainer does: the step compiles for the abstract state (shapes, FSDP
    shardings) while the state is made, and its first call on that state compiles
    nothing more."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    model_cfg, rules = tiny_model(), sharding.DEFAULT_RULES
    optimizer = state_lib.make_optimizer(base_config().optimizer, 1e-3, 2)

    def boxed_params():
        return {"unet": init_params(model_cfg, jax.random.key(0), IMAGE, boxed=True)}
    target = sharding.abstract_with_shardings(
        lambda: state_lib.state_from_params(boxed_params(), optimizer), mesh, rules)
    step = jax.jit(make_train_step(
        build_model(model_cfg), diffusion.DiffusionConfig(multi_res_weights=(4.0, 1.0)),
        config_lib.nest_scales(model_cfg), optimizer, state_lib.learning_rate_schedule(1e-3, 2),
        ema_decay=0.99), donate_argnums=0, out_shardings=(
            jax.tree_util.tree_map(lambda x: x.sharding, target), sharding.replicated(mesh)))
    batch = put_batch(make_batch(), mesh)
    ahead = CompileAhead(step, target, batch, jax.random.key(0))
    abstract = jax.eval_shape(boxed_params)
    params = sharding.create_leafwise(abstract, mesh, rules, seed=0)
    state, _ = state_lib.create_state(abstract, params, params, optimizer, mesh, rules)
    assert ahead.wait() > 0
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        state, metrics = step(state, batch, jax.random.key(3))
        jax.block_until_ready(metrics)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == [] and np.isfinite(metrics["loss"]) and int(state.step) == 1


def test_row_groups_take_each_blocks_first_rows():
    x = jnp.arange(12).reshape(12, 1)
    np.testing.assert_array_equal(first_rows(x, 4)[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(first_rows(x, 4, groups=2)[:, 0], [0, 1, 6, 7])
    # Clips' frames as rows: 2 frames a row, 3 groups of 2 clips, the first clip of each.
    np.testing.assert_array_equal(first_rows(x, 3, groups=3, per_row=2)[:, 0],
                                  [0, 1, 4, 5, 8, 9])
    back = pad_rows(first_rows(x, 4, groups=2), 12, groups=2)[:, 0]
    np.testing.assert_array_equal(back, [0, 1, 0, 0, 0, 0, 6, 7, 0, 0, 0, 0])
    assert diffusion.level_batch_sizes((2.0, 1.0), 48, 2, groups=8) == (32, 48)
    assert diffusion.level_batch_sizes((2.0, 1.0), 1024, 2) == (682, 1024)
    assert diffusion.level_batch_sizes((2.0, 1.0), 1024, 2, groups=128) == (640, 1024)
    with pytest.raises(ValueError, match="multiple"):
        diffusion.level_batch_sizes((2.0, 1.0), 12, 2, groups=8)


def test_accumulated_micro_batches_equal_the_batch_with_their_row_groups():
    """A mixed ratio of 2:1 on one device: 2 micro-batches against the whole batch seen as
    2 row groups (what a 2-device batch is): the same rows at every level."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    batch, rng = make_batch(batch_size=12), jax.random.key(3)
    whole, whole_step = setup_step(tiny_model(), mesh, (2.0, 1.0), batch_shards=2)
    whole, m1 = whole_step(whole, put_batch(batch, mesh), rng)
    parts, parts_step = setup_step(tiny_model(), mesh, (2.0, 1.0), gradient_accumulation_steps=2)
    parts, m2 = parts_step(parts, put_batch(batch, mesh), rng)
    for key in ("loss", "grad_norm", "mse_level0", "mse_level1"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree_util.tree_leaves(whole.params),
                    jax.tree_util.tree_leaves(parts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _collectives_and_temporaries(mixed_ratio):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
    state, step = setup_step(tiny_model(), mesh, mixed_ratio,
                             batch_shards=sharding.batch_shards(mesh))
    compiled = step.lower(state, put_batch(make_batch(batch_size=48), mesh),
                          jax.random.key(0)).compile()
    kinds = re.findall(r" (all-gather|all-to-all|collective-permute|all-reduce)\(",
                       compiled.as_text())
    return collections.Counter(kinds), compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_a_mixed_ratio_over_eight_devices_moves_no_activations():
    """Each device trains the high level on its own rows: the 2:1 step over fsdp=8 has no
    more collectives than the plain step (the parameters' gathers and the gradients'
    reductions) and no more memory, as on one device. The batch's first rows instead sat
    on the first devices: 63 collective-permutes, 64 more all-gathers and 1.6 times the
    temporaries (docs/performance.md)."""
    plain, plain_bytes = _collectives_and_temporaries(None)
    mixed, mixed_bytes = _collectives_and_temporaries((2.0, 1.0))
    assert mixed["collective-permute"] == 0, mixed
    assert all(mixed[kind] <= plain[kind] for kind in mixed), (mixed, plain)
    assert mixed_bytes <= plain_bytes


@pytest.mark.slow
def test_growth_keeps_old_params_and_lower_outputs():
    full = tiny_model()
    small_cfg = stage_model_config(full, 1)
    old = init_params(small_cfg, jax.random.key(1), IMAGE // 2)
    # Give the old model non-trivial output layers so equality means something.
    old = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                                 old)
    fresh = init_params(full, jax.random.key(2), IMAGE, boxed=True)
    growth.check_inner_matches(old, fresh)
    grown = growth.insert_inner(flax.linen.unbox(fresh), old)
    flat_old = flax.traverse_util.flatten_dict(old)
    flat_new = flax.traverse_util.flatten_dict(grown["inner_unet"])
    assert flat_old.keys() == flat_new.keys()
    for k in flat_old:
        np.testing.assert_array_equal(flat_old[k], flat_new[k])
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, IMAGE, IMAGE, 3)).astype(np.float32),
          rng.normal(size=(2, IMAGE // 2, IMAGE // 2, 3)).astype(np.float32)]
    times, labels = jnp.array([10, 700]), jnp.array([1, -1])
    micros = {"scale": jnp.array([16.0, 8.0])}
    new_out = jax.jit(build_model(full).apply)({"params": grown}, xs, times,
                                               class_labels=labels, micros=micros)
    old_out = jax.jit(build_model(small_cfg).apply)({"params": old}, xs[1:], times,
                                                    class_labels=labels, micros=micros)
    np.testing.assert_array_equal(new_out[1], old_out[0])


def test_growth_refuses_a_mismatched_checkpoint():
    full = tiny_model()
    other = stage_model_config(tiny_model(), 1)
    other.unet.resolution_channels = [32, 64]
    # The check reads shapes only: abstract params, nothing to compute.
    old = jax.eval_shape(lambda: init_params(other, jax.random.key(1), IMAGE // 2))
    new = jax.eval_shape(lambda: init_params(full, jax.random.key(2), IMAGE, boxed=True))
    with pytest.raises(ValueError, match=r"does not fit the new model's inner UNet at"):
        growth.check_inner_matches(old, new)
