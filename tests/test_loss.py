"""The multi-resolution loss against the reference's recorded get_loss calls (loss_*.npz).

The replay tests feed the recorded network outputs back (isolating the diffusion math);
the end-to-end tests run our model built from the fixture's configuration and weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import (
    DiffusionConfig,
    batch_loss,
    convert_prediction,
    level_batch_sizes,
    multires_loss,
    process,
    sample_loss_noise,
    schedules,
)
from mdm_jax.reference.diffusion import from_reference_diffusion
from parity_utils import levels, load, nchw, nhwc, read_json, state_dict

LOSS_FIXTURES = ["loss_nested", "loss_nested2", "loss_nested_mixed"]
TOL = dict(rtol=1e-4, atol=1e-4)



class Fixture:
    """One recorded get_loss call, in our layout."""

    def __init__(self, name):
        f = self.f = load(name)
        meta = read_json(f, "meta_json")
        self.scales = tuple(meta["scales"])
        self.config = from_reference_diffusion(read_json(f, "diffusion_config_json"))
        self.images = nhwc(f["input/images"])
        self.lm_outputs = f["input/lm_outputs"]
        self.lm_mask = f["input/lm_mask"]
        self.micros = {k.split("/")[-1]: f[k] for k in f.files if k.startswith("input/micros/")}
        draws = [f[d["key"]] for d in read_json(f, "noise_order_json")]
        self.times = draws[0].astype(np.int32)
        self.noises = [nhwc(eps) for eps in draws[1:]]
        self.rows = level_batch_sizes(self.config.mixed_ratio, len(self.times), len(self.scales))

    def replay_denoise_fn(self, seen):
        """Returns the recorded outputs; records what it was given in `seen`."""
        outputs = [nhwc(out) for out in levels(self.f, "trace/model_out")]

        def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
            seen.update(xs=xs, times=times, lm_outputs=lm_outputs, lm_mask=lm_mask, micros=micros)
            return [jnp.asarray(out[: x.shape[0]]) for out, x in zip(outputs, xs)]

        return denoise_fn

    def loss(self, denoise_fn):
        return multires_loss(
            denoise_fn, self.images, self.times, self.noises, config=self.config,
            scales=self.scales, lm_outputs=self.lm_outputs, lm_mask=self.lm_mask,
            micros=self.micros)


@pytest.fixture(scope="module", params=LOSS_FIXTURES)
def fixture(request):
    return Fixture(request.param)


def test_replayed_loss_matches_reference(fixture):
    f = fixture.f
    seen = {}
    loss, aux = fixture.loss(fixture.replay_denoise_fn(seen))
    np.testing.assert_allclose(loss, f["output/loss"], **TOL)
    np.testing.assert_array_equal(fixture.times, f["output/time"])
    # What the network was given: the noisy pyramid (truncated rows under mixed_ratio),
    # the time steps t (not t + 1), and the untouched conditioning.
    for x, want, r in zip(seen["xs"], levels(f, "trace/x_t"), fixture.rows):
        assert x.shape[0] == r
        np.testing.assert_allclose(nchw(x), want[:r], **TOL)
    np.testing.assert_array_equal(seen["times"], fixture.times)
    np.testing.assert_array_equal(seen["lm_outputs"], fixture.lm_outputs)
    assert set(seen["micros"]) == set(fixture.micros)
    # Per-level MSE before weights; rows a level skipped are 0 (the reference computes a
    # meaningless value on zero-padded outputs there, then discards it).
    for mse, want, r in zip(aux["mse"], levels(f, "trace/mse"), fixture.rows):
        np.testing.assert_allclose(mse[:r], want[:r], **TOL)
        np.testing.assert_array_equal(mse[r:], 0)
    np.testing.assert_array_equal(aux["example_weight"], 1)  # cc12m: no VDM weights


def test_forward_process_matches_trace(fixture):
    f = fixture.f
    clean = process.pyramid(fixture.images, fixture.scales)
    for image, want in zip(clean, levels(f, "trace/images")):
        np.testing.assert_allclose(nchw(image), want, rtol=1e-6, atol=1e-6)
    tables = fixture.config.level_gammas(fixture.scales)
    t = fixture.times
    for i in range(len(fixture.scales)):
        gamma = f[f"trace/gamma/{i}"]
        np.testing.assert_allclose(tables[i][t + 1], gamma, rtol=1e-6)
        np.testing.assert_allclose(tables[i][t], f[f"trace/gamma_last/{i}"], rtol=1e-6)
        x_t = process.add_noise(nhwc(f[f"trace/images/{i}"]), fixture.noises[i], gamma)
        np.testing.assert_allclose(nchw(x_t), f[f"trace/x_t/{i}"], **TOL)


def test_v_output_converted_to_eps_matches_trace(fixture):
    f = fixture.f
    for i, r in enumerate(fixture.rows):  # skipped rows hold the reference's padding
        pred = convert_prediction(
            nhwc(f[f"trace/model_out/{i}"][:r]), nhwc(f[f"trace/x_t/{i}"][:r]),
            f[f"trace/gamma/{i}"][:r], "v", "eps")
        np.testing.assert_allclose(nchw(pred), f[f"trace/pred/{i}"][:r], **TOL)
        np.testing.assert_array_equal(f[f"trace/target/{i}"], f[f"trace/eps/{i}"])


def test_jitted_loss_matches_eager(fixture):
    denoise_fn = fixture.replay_denoise_fn({})

    @jax.jit
    def loss_fn(images, times, noises, lm_outputs, lm_mask, micros):
        return multires_loss(denoise_fn, images, times, noises, config=fixture.config,
                             scales=fixture.scales, lm_outputs=lm_outputs, lm_mask=lm_mask,
                             micros=micros)[0]

    got = loss_fn(fixture.images, fixture.times, fixture.noises, fixture.lm_outputs,
                  fixture.lm_mask, fixture.micros)
    np.testing.assert_allclose(got, fixture.f["output/loss"], **TOL)


def test_model_loss_matches_reference(fixture):
    """End to end: our NestedUNet built from the fixture's config and reference weights."""
    from mdm_jax.models import build_model
    from mdm_jax.reference import from_reference

    f = fixture.f
    model_config, params = from_reference(read_json(f, "config_json"), state_dict(f))
    module = build_model(model_config)

    def loss_fn(params):
        def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
            return module.apply({"params": params}, xs, times, lm_outputs, lm_mask, micros)
        return fixture.loss(denoise_fn)

    loss, aux = jax.jit(loss_fn)(params)
    np.testing.assert_allclose(loss, f["output/loss"], **TOL)
    for mse, want, r in zip(aux["mse"], levels(f, "trace/mse"), fixture.rows):
        np.testing.assert_allclose(mse[:r], want[:r], **TOL)


# ---- configuration ------------------------------------------------------------------------


def test_from_reference_diffusion_maps_the_fixture_settings():
    two = from_reference_diffusion(read_json(load("loss_nested"), "diffusion_config_json"))
    assert two == DiffusionConfig(
        schedule_type="deepfloyd", num_diffusion_steps=1000, schedule_shifted_power=1.0,
        prediction_type="v", loss_target_type="eps", use_vdm_loss_weights=False,
        use_double_loss=True, multi_res_weights=(4.0, 1.0), mixed_ratio=None, threshold="clip")
    three = from_reference_diffusion(read_json(load("loss_nested2"), "diffusion_config_json"))
    assert three.multi_res_weights == (16.0, 4.0, 1.0) and three.schedule_shifted_power == 2.0
    mixed = from_reference_diffusion(read_json(load("loss_nested_mixed"), "diffusion_config_json"))
    assert mixed.mixed_ratio == (2.0, 1.0) and mixed.multi_res_weights is None
    hash(mixed)  # usable as a static jit argument


@pytest.mark.parametrize("change, message", [
    (dict(no_use_residual=False), "no_use_residual"),
    (dict(sampler_config=dict(rescale_schedule=2.0)), "rescale_schedule"),
    (dict(sampler_config=dict(schedule_type="SIGMOID")), "SIGMOID.*COSINE, DDPM, DEEPFLOYD"),
    (dict(sampler_config=dict(schedule_shifted=False)), "schedule_shifted"),
    (dict(model_output_scale=1.0), "model_output_scale"),
    (dict(use_double_loss=False), "multi_res_weights"),
])
def test_from_reference_diffusion_rejects_what_the_reference_cannot_run(change, message):
    reference = read_json(load("loss_nested"), "diffusion_config_json")
    reference.update({k: v for k, v in change.items() if k != "sampler_config"})
    reference["sampler_config"].update(change.get("sampler_config", {}))
    with pytest.raises(ValueError, match=message):
        from_reference_diffusion(reference)


def test_config_validation_names_the_valid_values():
    with pytest.raises(ValueError, match="cosine, ddpm, deepfloyd"):
        DiffusionConfig(schedule_type="sigmoid")
    with pytest.raises(ValueError, match="v, eps, x0"):
        DiffusionConfig(prediction_type="ddim")
    with pytest.raises(ValueError, match="Unknown diffusion config keys.*'mixed_ratios'"):
        DiffusionConfig.from_dict({"mixed_ratios": [2, 1]})
    cfg = DiffusionConfig.from_dict({"mixed_ratio": [2, 1], "multi_res_weights": [4, 1]})
    assert cfg.mixed_ratio == (2.0, 1.0) and cfg.multi_res_weights == (4.0, 1.0)
    with pytest.raises(ValueError, match="one per level"):
        cfg.check_levels(3)


# ---- properties not taken from fixtures ---------------------------------------------------


def _random_inputs(seed, shape, scales):
    """Images in [-1, 1], times and per-level noise from numpy (cheaper to make than with
    jax.random outside jit, which compiles each draw)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, shape).astype(np.float32)
    times = rng.integers(0, 1000, shape[0]).astype(np.int32)
    noises = [rng.standard_normal(s).astype(np.float32)
              for s in process.level_shapes(shape, scales)]
    return images, times, noises


def _toy_denoise_fn(calls):
    """A cheap stand-in network: a fixed function of each level's input."""
    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        calls.append([x.shape for x in xs])
        return [0.5 * x + 0.001 * times[: x.shape[0], None, None, None] for x in xs]
    return denoise_fn


def test_mixed_ratio_loss_compiles_once_with_static_row_counts():
    config = DiffusionConfig(mixed_ratio=(1, 1, 2), multi_res_weights=(16, 4, 1))
    scales = (4, 2, 1)
    calls = []
    loss_fn = jax.jit(lambda images, times, noises: multires_loss(
        _toy_denoise_fn(calls), images, times, noises, config=config, scales=scales))
    for seed in range(2):
        loss, aux = loss_fn(*_random_inputs(seed, (8, 16, 16, 3), scales))
        assert loss.shape == (8,) and np.all(np.isfinite(loss))
    # One trace for both batches; the levels ran on 2, 4 and 8 rows (m = 1/4, 1/2, 1).
    assert calls == [[(2, 16, 16, 3), (4, 8, 8, 3), (8, 4, 4, 3)]]
    for mse, rows in zip(aux["mse"], (2, 4, 8)):
        assert np.all(mse[:rows] > 0) and np.all(mse[rows:] == 0)
    # Rows only the lowest level saw carry just its (unrescaled) weighted loss.
    np.testing.assert_allclose(loss[4:], aux["mse"][2][4:], rtol=1e-6)


def test_double_loss_switch_and_level_weights():
    scales = (2, 1)
    images, times, noises = _random_inputs(0, (2, 8, 8, 3), scales)
    run = lambda cfg: multires_loss(_toy_denoise_fn([]), images, times, noises, config=cfg,
                                    scales=scales)
    loss, aux = run(DiffusionConfig(use_double_loss=True, multi_res_weights=(4, 1)))
    np.testing.assert_allclose(loss, 4 * aux["mse"][0] + aux["mse"][1], rtol=1e-6)
    loss, aux = run(DiffusionConfig(use_double_loss=False))
    np.testing.assert_allclose(loss, aux["mse"][0], rtol=1e-6)


def test_vdm_weights_are_read_at_time_plus_one():
    config = DiffusionConfig(schedule_type="cosine", use_vdm_loss_weights=True)
    images = jnp.zeros((3, 4, 4, 3))
    times = jnp.array([0, 10, 999])
    noises = [jnp.ones((3, 4, 4, 3)), jnp.ones((3, 2, 2, 3))]
    loss, aux = multires_loss(_toy_denoise_fn([]), images, times, noises, config=config,
                              scales=(2, 1))
    table = schedules.vdm_loss_weights(schedules.base_gammas("cosine", 1000))
    np.testing.assert_array_equal(aux["example_weight"], table[np.array([1, 11, 1000])])
    want = np.sum(loss * aux["example_weight"]) / np.sum(aux["example_weight"])
    np.testing.assert_allclose(batch_loss(loss, aux["example_weight"]), want, rtol=1e-6)


@pytest.mark.parametrize("prediction_type", ["v", "eps", "x0"])
@pytest.mark.parametrize("target_type", ["v", "eps", "x0"])
def test_a_perfect_network_has_zero_loss_for_every_type_pair(prediction_type, target_type):
    config = DiffusionConfig(prediction_type=prediction_type, loss_target_type=target_type)
    scales = (2, 1)
    images, _, noises = _random_inputs(1, (4, 8, 8, 3), scales)
    times = np.array([5, 200, 600, 950])
    clean = process.pyramid(images, scales)
    gammas = config.level_gammas(scales)[:, times + 1]

    def oracle(xs, t, lm_outputs, lm_mask, micros):
        return [process.as_prediction(x0, eps, g, prediction_type)
                for x0, eps, g in zip(clean, noises, gammas)]

    loss, _ = multires_loss(oracle, images, times, noises, config=config, scales=scales)
    np.testing.assert_allclose(loss, 0, atol=1e-8)


def test_sample_loss_noise_shapes_and_range():
    images = jnp.zeros((5, 32, 32, 3), jnp.bfloat16)
    key = jax.random.key(3)
    draw = lambda key, images: sample_loss_noise(key, images, (4, 2, 1), 1000)
    times, noises = jax.jit(draw)(key, images)
    assert times.shape == (5,) and jnp.issubdtype(times.dtype, jnp.integer)
    assert int(times.min()) >= 0 and int(times.max()) < 1000
    assert [n.shape for n in noises] == [(5, 32, 32, 3), (5, 16, 16, 3), (5, 8, 8, 3)]
    assert all(n.dtype == jnp.float32 for n in noises)


def test_mixed_ratio_too_small_batch_is_a_clear_error():
    config = DiffusionConfig(mixed_ratio=(1, 3))
    images = jnp.zeros((3, 4, 4, 3))
    noises = [jnp.zeros((3, 4, 4, 3)), jnp.zeros((3, 2, 2, 3))]
    with pytest.raises(ValueError, match="larger batch"):
        multires_loss(_toy_denoise_fn([]), images, jnp.zeros(3, jnp.int32), noises,
                      config=config, scales=(2, 1))
