"""The video NestedUNet: clips as a time axis, spatial and temporal levels, temporal
attention, the clip pyramid of the loss, and a video model made from an image model."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import DiffusionConfig, process
from mdm_jax.diffusion.loss import batch_loss, multires_loss, sample_loss_noise
from mdm_jax.models import build_model, example_inputs, inflate, temporal
from mdm_jax.models import config as config_lib
from mdm_jax.models.rows import first_rows
from mdm_jax.parallel import sharding

SMALL = dict(temporal_dim=64, num_groups_norm=8)


def temporal_nested_config():
    """16x64^2 (spatial) > 16x16^2 (temporal, 16 -> 1 frame) > 1x16^2, scaled down."""
    inner = config_lib.level_config(resolution_channels=[16, 32], num_resnets_per_resolution=[1, 1],
                                    attention_levels=[1], num_attention_layers=[0, 1], **SMALL)
    middle = config_lib.level_config(
        resolution_channels=[16] * 5, num_resnets_per_resolution=[1] * 5,
        num_attention_layers=[0] * 5, kind="temporal", skip_mid_blocks=True,
        skip_normalization=False, num_temporal_attention_layers=[1, 1, 0, 0, 0],
        temporal_positional_encoding=True, **SMALL)
    middle.inner = inner
    outer = config_lib.level_config(
        resolution_channels=[8, 16, 16], num_resnets_per_resolution=[1, 1, 1],
        num_attention_layers=[0] * 3, skip_mid_blocks=True, skip_normalization=False,
        num_temporal_attention_layers=[0, 0, 1], **SMALL)
    outer.inner = middle
    return config_lib.model_config(outer, num_frames=16, conditioning_feature_dim=16)


def image_config(num_frames=0, temporal_layers=()):
    """A two-level image NestedUNet 32^2 > 16^2, or (num_frames > 0) the same levels as a
    video model with temporal attention after each ResNet at resolutions temporal_layers."""
    def layers(n):
        return [int(i in temporal_layers) for i in range(n)] if num_frames else []
    inner = config_lib.level_config(resolution_channels=[16, 32], num_resnets_per_resolution=[1, 1],
                                    attention_levels=[1], num_attention_layers=[0, 1],
                                    num_temporal_attention_layers=layers(2), **SMALL)
    outer = config_lib.level_config(resolution_channels=[8, 16], num_resnets_per_resolution=[1, 1],
                                    num_attention_layers=[0, 0], skip_mid_blocks=True,
                                    num_temporal_attention_layers=layers(2), **SMALL)
    outer.inner = inner
    return config_lib.model_config(outer, num_frames=num_frames, conditioning_feature_dim=16)


def boxed_shapes(cfg, size):
    xs, kwargs = example_inputs(cfg, size)
    return jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), xs, **kwargs))[
        "params"]


def fresh(cfg, size, seed=0):
    """Fresh parameters on one device, made leaf by leaf (fast to compile)."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    return sharding.create_leafwise(boxed_shapes(cfg, size), mesh, sharding.DEFAULT_RULES, seed)


def randomise(params, names, seed=0):
    """params with the leaves whose path contains one of `names` drawn at random (to give
    zero-initialised output layers weights)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype)
        if any(n in jax.tree_util.keystr(p) for n in names) else v, params)


def text_inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    return dict(lm_outputs=jnp.asarray(rng.normal(size=(batch, 4, 16)), jnp.float32),
                lm_mask=jnp.asarray([[1, 1, 1, 0]] * batch, jnp.int32))


def test_level_frames_sizes_and_config_errors():
    cfg = temporal_nested_config()
    assert config_lib.level_frames(cfg) == [16, 16, 1]
    assert config_lib.level_sizes(cfg, 64) == [64, 16, 16]
    assert config_lib.nest_frame_ratios(cfg) == [16, 16, 1]
    cfg.num_frames = 8
    with pytest.raises(ValueError, match="multiple of 16"):
        config_lib.validate(cfg)
    image = image_config()
    image.unet.kind = "temporal"
    with pytest.raises(ValueError, match="model.num_frames"):
        config_lib.validate(image)
    cfg = temporal_nested_config()
    cfg.unet.num_temporal_attention_layers = [1]
    with pytest.raises(ValueError, match="one per resolution"):
        config_lib.validate(cfg)


def test_clip_pyramid_pools_frames_and_subsamples_by_the_local_ratio():
    clips = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 8, 3)), jnp.float32)
    levels = process.pyramid(clips, [4, 2, 2], frame_ratios=[8, 4, 2])
    assert [x.shape for x in levels] == [(2, 8, 8, 8, 3), (2, 4, 4, 4, 3), (2, 2, 4, 4, 3)]
    assert [x.shape for x in levels] == process.level_shapes(clips.shape, [4, 2, 2], [8, 4, 2])
    pooled = process.average_pool(clips.reshape(16, 8, 8, 3), 2).reshape(2, 8, 4, 4, 3)
    np.testing.assert_allclose(levels[1], pooled[:, [0, 2, 4, 6]], rtol=1e-6)
    # The local ratio (4 -> 2 frames: every second one) keeps frames 0 and 4; the ratio to
    # the top level (8 / 2 = 4) would keep only frame 0.
    np.testing.assert_allclose(levels[2], pooled[:, [0, 4]], rtol=1e-6)


def test_temporal_layers_start_as_identity_and_mix_frames_once_trained():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2 * 4, 3, 3, 16)), jnp.float32)
    layer = temporal.TemporalAttention(rotary=True)
    params = layer.init(jax.random.key(0), x, 4)
    np.testing.assert_array_equal(layer.apply(params, x, 4), x)
    params = randomise(params, ["proj_out", "mlp_out"])
    y = layer.apply(params, x, 4)
    # Changing frame 3 of clip 0 changes its other frames, never the other clip's.
    x2 = x.at[3].add(jnp.linspace(-1, 1, 16))  # not a constant: LayerNorm removes those
    y2 = layer.apply(params, x2, 4)
    assert float(jnp.abs(y2[:3] - y[:3]).max()) > 1e-4
    np.testing.assert_array_equal(y2[4:], y[4:])
    down = temporal.TemporalResample(8, "down")
    p = down.init(jax.random.key(1), x, 4)
    z, frames = down.apply(p, x, 4)
    assert frames == 2 and z.shape == (2 * 2, 3, 3, 8)
    up = temporal.TemporalResample(16, "up")
    z, frames = up.apply(up.init(jax.random.key(2), z, 2), z, 2)
    assert frames == 4 and z.shape == x.shape


@pytest.mark.slow
def test_temporal_nested_model_trains_sharded_on_8_devices():
    """Forward and backward of 16x64^2 > 16x16^2 > 1x16^2 on a 2x4 data x fsdp mesh of
    fake CPU devices: the loss is one device's forward loss, every gradient is finite and
    the temporal layers' are not zero. (test_train_step checks sharded gradients against
    one device's for the image step; one compile of this program costs half a minute.)"""
    cfg = temporal_nested_config()
    params = randomise(fresh(cfg, 64), ["proj_out", "mlp_out", "conv2", "adapter", "conv_out"])
    model = build_model(cfg)
    diffusion = DiffusionConfig(num_diffusion_steps=1000, use_double_loss=True)
    scales = config_lib.nest_scales(cfg)
    ratios = config_lib.nest_frame_ratios(cfg)
    clips = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (8, 16, 64, 64, 3)), jnp.float32)
    times, noises = sample_loss_noise(jax.random.key(3), clips, scales, 1000, ratios)
    text = text_inputs(8)

    def loss_fn(p, clips, noises, times, text):
        def denoise(xs, t, lm_outputs, lm_mask, micros):
            return model.apply({"params": p}, xs, t, lm_outputs, lm_mask, micros)
        loss, aux = multires_loss(denoise, clips, times, noises, config=diffusion,
                                  scales=scales, frame_ratios=ratios, **text)
        return batch_loss(loss, aux["example_weight"]), aux["mse"]

    loss1, mse1 = jax.jit(loss_fn)(params, clips, noises, times, text)
    assert [m.shape for m in mse1] == [(8,)] * 3

    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    shardings = sharding.tree_shardings(boxed_shapes(cfg, 64), mesh, sharding.DEFAULT_RULES)
    assert any(len(s.device_set) == 8 and not s.is_fully_replicated
               for s in jax.tree_util.tree_leaves(shardings))
    sharded = jax.device_put(params, shardings)
    batch = jax.device_put((clips, noises, times, text),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
                               ("data", "fsdp"))))
    (loss8, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(sharded, *batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    flat = flax.traverse_util.flatten_dict(grads, sep="/")
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in flat.values())
    temporal_grads = [v for k, v in flat.items() if "temporal_" in k]
    assert temporal_grads and all(float(jnp.abs(g).max()) > 0 for g in temporal_grads)


@pytest.mark.slow
def test_all_spatial_video_model_from_an_image_model_is_that_model_on_each_frame():
    """Temporal attention at its zero initialisation: the video model made from an image
    model's parameters gives, frame by frame, exactly the image model's outputs."""
    image_cfg, video_cfg = image_config(), image_config(num_frames=4, temporal_layers=(0, 1))
    image_params = randomise(fresh(image_cfg, 32), ["conv2", "adapter", "conv_out", "proj_out"])
    video_params = inflate.image_to_video_params(fresh(video_cfg, 32, seed=1), video_cfg,
                                                 image_params, image_cfg)
    rng = np.random.default_rng(2)
    clips = [jnp.asarray(rng.normal(size=(2, 4, s, s, 3)), jnp.float32) for s in (32, 16)]
    times, text = jnp.array([10, 700]), text_inputs(2)
    video_out = jax.jit(build_model(video_cfg).apply)({"params": video_params}, clips, times,
                                                      **text)
    image_apply = jax.jit(build_model(image_cfg).apply)
    for f in range(4):
        image_out = image_apply({"params": image_params}, [x[:, f] for x in clips], times,
                                **text)
        for level in range(2):
            np.testing.assert_allclose(video_out[level][:, f], image_out[level], rtol=1e-5,
                                       atol=1e-5)
    # Trained temporal layers make the frames depend on each other.
    mixed = randomise(video_params, ["temporal_attn"], seed=3)
    out = jax.jit(build_model(video_cfg).apply)({"params": mixed}, clips, times, **text)
    assert float(jnp.abs(out[0] - video_out[0]).max()) > 1e-4


def test_temporal_video_model_from_an_image_model_keeps_every_image_layer():
    """The image model's levels fill the spatial level and the innermost UNet; at zero
    adapters the innermost output is the image model's innermost on its frame."""
    image_cfg, video_cfg = image_config(), temporal_nested_config()
    video_cfg.unet.inner.inner = image_cfg.unet.inner  # the image model's inner UNet
    video_cfg.unet.resolution_channels = [8, 16, 16]
    image_cfg.unet.resolution_channels = [8, 16, 16]
    image_cfg.unet.num_resnets_per_resolution = [1, 1, 1]
    image_cfg.unet.num_attention_layers = [0, 0, 0]
    image_params = randomise(fresh(image_cfg, 64), ["conv2", "adapter", "conv_out"])
    video_params = inflate.image_to_video_params(fresh(video_cfg, 64, seed=1), video_cfg,
                                                 image_params, image_cfg)
    flat_video = flax.traverse_util.flatten_dict(video_params, sep="/")
    flat_image = flax.traverse_util.flatten_dict(image_params, sep="/")
    copied = 0
    for key, value in flat_image.items():
        level = key.count("inner_unet")
        target = key if level == 0 else key.replace("inner_unet/", "inner_unet/inner_unet/", 1)
        if level == 0 and "adapter" in key:
            assert not np.any(flat_video[target]), key  # fresh zeros: the inner is temporal
            continue
        np.testing.assert_array_equal(flat_video[target], value)
        copied += 1
    assert copied > 20
    rng = np.random.default_rng(4)
    shapes = [(1, 16, 64, 64, 3), (1, 16, 16, 16, 3), (1, 1, 16, 16, 3)]
    clips = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    times, text = jnp.array([300]), text_inputs(1)
    video_out = jax.jit(build_model(video_cfg).apply)({"params": video_params}, clips, times,
                                                      **text)
    inner_cfg = config_lib.model_config(image_cfg.unet.inner, conditioning_feature_dim=16)
    inner_out = jax.jit(build_model(inner_cfg).apply)({"params": image_params["inner_unet"]},
                                                      [clips[2][:, 0]], times, **text)
    np.testing.assert_allclose(video_out[2][:, 0], inner_out[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="spatial one"):
        inflate.image_to_video_params(video_params, video_cfg,
                                      image_params["inner_unet"], inner_cfg)


@pytest.mark.slow
def test_row_groups_run_each_group_as_a_batch_of_its_own():
    """Mixed-ratio rows in 2 groups (models/rows.py) through the temporal nested model:
    each group's outputs are those of the group run alone, so each level's rows, the
    adapters' padding between levels and the clips' frames line up group by group."""
    cfg = temporal_nested_config()
    params = randomise(fresh(cfg, 64), ["proj_out", "mlp_out", "conv2", "adapter", "conv_out"])
    apply = jax.jit(build_model(cfg).apply, static_argnames="row_groups")
    rng = np.random.default_rng(2)
    shapes, _ = example_inputs(cfg, 64, batch_size=4)
    rows = (2, 4, 4)  # the top level on each group's first clip
    xs = [first_rows(jnp.asarray(rng.normal(size=x.shape), jnp.float32), r, 2)
          for x, r in zip(shapes, rows)]
    times, text = jnp.array([5, 100, 300, 900]), text_inputs(4)
    grouped = apply({"params": params}, xs, times, **text, row_groups=2)
    for g in (0, 1):
        part = lambda x, r: x[g * r // 2:(g + 1) * r // 2]
        alone = apply({"params": params}, [part(x, r) for x, r in zip(xs, rows)],
                      part(times, 4), **{k: part(v, 4) for k, v in text.items()})
        for out, ref, r in zip(grouped, alone, rows):
            np.testing.assert_allclose(part(out, r), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_video_sampler_with_the_text_processed_once_gives_the_same_clips():
    """Each attention layer's text keys and values are made once per clip before the
    loop and serve the clip's frames (the inner level attends with 4 frames a clip): the
    same clips as processing the text at every step."""
    from mdm_jax.sampling.sampler import make_sampler

    cfg = image_config(num_frames=4, temporal_layers=(1,))
    params = randomise(flax.linen.unbox(fresh(cfg, 32)),
                       ("conv_out", "adapter", "proj_out", "conv2"))
    text, uncond = text_inputs(2), text_inputs(2, seed=1)
    runs = [make_sampler(build_model(cfg), DiffusionConfig(num_diffusion_steps=1000), (2, 1),
                         (2, 4, 32, 32, 3), sampler="ddim", num_steps=2, eta=0.0,
                         guidance_scale=3.0, condition_once=once)
            (params, jax.random.key(0), None, text["lm_outputs"], text["lm_mask"],
             uncond["lm_outputs"], uncond["lm_mask"])
            for once in (False, True)]
    for old, new in zip(*runs):
        assert old.shape == new.shape == (2, 4) + old.shape[2:]
        np.testing.assert_allclose(np.asarray(old), np.asarray(new), rtol=1e-6, atol=1e-6)
