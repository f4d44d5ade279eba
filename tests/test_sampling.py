"""Sampling steps and loops against the reference's NestedSampler (sampler.npz).

Replay tests feed the recorded network outputs back (isolating the sampler math); the
end-to-end tests run our model built from the fixture's configuration and weights.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdm_jax.diffusion import (
    DiffusionConfig,
    as_prediction,
    denoise_step,
    eps_from_x0,
    guidance_batch,
    initial_noise,
    level_shapes,
    pyramid,
    respaced_timesteps,
    sample,
    step_noise_from_key,
    threshold_x0,
)
from mdm_jax.reference.diffusion import from_reference_diffusion
from parity_utils import levels, load, nchw, nhwc, read_json, state_dict

F = load("sampler")
META = read_json(F, "meta_json")
SCALES = tuple(META["scales"])
CONFIG = from_reference_diffusion(read_json(F, "diffusion_config_json"))
NUM_LEVELS = len(SCALES)
STEPS = ["step_ddpm", "step_ddim", "step_ddim_eta05", "step_ddpm_t1"]
LOOPS = ["loop_ddpm_g1", "loop_ddpm_cfg3", "loop_ddim_cfg3"]
TOL = dict(rtol=1e-4, atol=1e-4)
LOOP_TOL = dict(rtol=1e-4, atol=2e-4)


COND = dict(lm_outputs=F["input/lm_outputs"], lm_mask=F["input/lm_mask"])
UNCOND = dict(uncond_lm_outputs=F["input/lm_outputs_uncond"],
              uncond_lm_mask=F["input/lm_mask_uncond"])


def _tape(item):
    """The item's recorded normal draws, in call order, NHWC."""
    return [nhwc(F[d["key"]]) for d in read_json(F, f"{item}/noise_order_json")]


def _step_args(item):
    spec = META["items"][item]
    noise = _tape(item) or None
    if noise is None and spec["ddim_eta"] is None:
        # t = 1: DDPM draws nothing there, but our step takes noise; it must be ignored.
        noise = [jnp.full(x.shape, 1e3) for x in _x_t(item)]
    return dict(t=spec["t"], s=spec["t_last"], noise=noise, eta=spec["ddim_eta"])


def _x_t(item):
    return [nhwc(x) for x in levels(F, f"{item}/step0/x_t")]


def _run_step(item, denoise_fn):
    args = _step_args(item)
    return denoise_step(
        denoise_fn, [nhwc(x) for x in levels(F, "input/x_t")], args["t"], args["s"],
        args["noise"], config=CONFIG, scales=SCALES, micros={"scale": F["input/micros/scale"]},
        eta=args["eta"], **COND)


def _check_step(item, result):
    for name in ("x_s", "x0", "pred"):
        for i, got in enumerate(getattr(result, name)):
            np.testing.assert_allclose(nchw(got), F[f"{item}/step0/{name}/{i}"], **TOL,
                                       err_msg=f"{item} {name}/{i}")


def _replay_step_fn(item, seen):
    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        seen.update(xs=xs, times=times, lm_outputs=lm_outputs, micros=micros)
        return [jnp.asarray(nhwc(out)) for out in levels(F, f"{item}/step0/model_out")]
    return denoise_fn


@pytest.mark.parametrize("item", STEPS)
def test_replayed_step_matches_reference(item):
    seen = {}
    result = _run_step(item, _replay_step_fn(item, seen))
    _check_step(item, result)
    np.testing.assert_array_equal(seen["times"], F[f"{item}/step0/model_time"])  # t - 1
    for x, want in zip(seen["xs"], levels(F, f"{item}/step0/x_t")):
        np.testing.assert_array_equal(nchw(x), want)
    np.testing.assert_array_equal(seen["micros"]["scale"], F["input/micros/scale"])


def _loop_spec(loop):
    spec = META["items"][loop]
    tape = _tape(loop)
    # Tape order: the lower levels' starting noise (normal_), then per step one draw per
    # level in level order (none for DDIM with eta 0).
    x_init = [nhwc(F[f"{loop}/input/noise"])] + tape[: NUM_LEVELS - 1]
    step_draws = tape[NUM_LEVELS - 1:]
    stacked = None
    if step_draws:  # [steps, ...] per level
        stacked = [jnp.stack(step_draws[i::NUM_LEVELS]) for i in range(NUM_LEVELS)]
    text = dict(COND, **UNCOND) if spec["guidance"] != 1 else COND
    return spec, x_init, stacked, text


def _run_loop(loop, denoise_fn):
    spec, x_init, stacked, text = _loop_spec(loop)

    def run(x_init, stacked):
        step_noise = (lambda i: [s[i] for s in stacked]) if stacked is not None else None
        return sample(denoise_fn, x_init, step_noise, config=CONFIG, scales=SCALES,
                      num_steps=spec["n"], micros={}, guidance_scale=spec["guidance"],
                      eta=spec["ddim_eta"], **text)

    return jax.jit(run)(x_init, stacked)


def _replay_loop_fn(loop, n):
    """Serves step j's recorded outputs, j found from the model time (t - 1)."""
    timesteps = jnp.asarray(respaced_timesteps(n, CONFIG.num_diffusion_steps))
    outputs = [jnp.stack([nhwc(F[f"{loop}/step{j}/model_out/{i}"]) for j in range(n)])
               for i in range(NUM_LEVELS)]

    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        step = jnp.argmax(timesteps[:-1] == times[0] + 1)
        return [out[step] for out in outputs]

    return denoise_fn


@pytest.mark.parametrize("loop", LOOPS)
def test_replayed_loop_matches_reference(loop):
    n = META["items"][loop]["n"]
    np.testing.assert_array_equal(respaced_timesteps(n, 1000), F[f"{loop}/timesteps"])
    final = _run_loop(loop, _replay_loop_fn(loop, n))
    np.testing.assert_allclose(nchw(final[0]), F[f"{loop}/output"], **LOOP_TOL)
    # The lower levels' results: the last step's x_s, clipped.
    for i in range(1, NUM_LEVELS):
        np.testing.assert_allclose(
            nchw(final[i]), np.clip(F[f"{loop}/step{n - 1}/x_s/{i}"], -1, 1), **LOOP_TOL)


@pytest.mark.parametrize("loop", LOOPS)
def test_replayed_loop_steps_match_reference(loop):
    """Each recorded step from its recorded input: the network's (doubled) batch, guidance,
    and the noise tape per step."""
    spec, _, stacked, text = _loop_spec(loop)
    timesteps = respaced_timesteps(spec["n"], CONFIG.num_diffusion_steps)
    for j in range(spec["n"]):
        item = f"{loop}/step{j}"
        x_t = [nhwc(x) for x in levels(F, f"{item}/x_t")]
        seen = {}

        def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
            seen.update(xs=xs, times=times, lm_outputs=lm_outputs, lm_mask=lm_mask)
            return [nhwc(x) for x in levels(F, f"{item}/model_out")]

        result = denoise_step(
            denoise_fn, x_t, timesteps[j], timesteps[j + 1],
            None if stacked is None else [s[j] for s in stacked],
            config=CONFIG, scales=SCALES, micros={}, guidance_scale=spec["guidance"],
            eta=spec["ddim_eta"], **text)
        # The text batch the reference was called with ([uncond; cond] under guidance),
        # the images repeated to match, and the time t - 1 for every row.
        np.testing.assert_array_equal(seen["lm_outputs"], F[f"{loop}/input/lm_outputs"])
        np.testing.assert_array_equal(seen["lm_mask"], F[f"{loop}/input/lm_mask"])
        copies = len(seen["lm_outputs"]) // len(x_t[0])
        for x, want in zip(seen["xs"], x_t):
            np.testing.assert_array_equal(x, np.concatenate([want] * copies))
        np.testing.assert_array_equal(seen["times"], timesteps[j] - 1)
        for name in ("x_s", "x0", "pred"):
            for i, got in enumerate(getattr(result, name)):
                np.testing.assert_allclose(nchw(got), F[f"{item}/{name}/{i}"], **TOL,
                                           err_msg=f"{item} {name}/{i}")


@pytest.mark.parametrize("loop", ["loop_ddpm_cfg3", "loop_ddim_cfg3"])
def test_guidance_batch_is_uncond_then_cond(loop):
    text, mask = guidance_batch(COND["lm_outputs"], COND["lm_mask"],
                                UNCOND["uncond_lm_outputs"], UNCOND["uncond_lm_mask"])
    np.testing.assert_array_equal(text, F[f"{loop}/input/lm_outputs"])
    np.testing.assert_array_equal(mask, F[f"{loop}/input/lm_mask"])


# ---- end to end with our model ------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _model():
    from mdm_jax.models import build_model
    from mdm_jax.reference import from_reference

    model_config, params = from_reference(read_json(F, "config_json"), state_dict(F))
    return build_model(model_config), params


def _model_fn(module, params):
    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        return module.apply({"params": params}, xs, times, lm_outputs, lm_mask, micros)
    return denoise_fn


@functools.lru_cache(maxsize=None)
def _jitted_model():
    """The model jitted once: the single steps share shapes, so it compiles once for them."""
    module, params = _model()
    apply = jax.jit(lambda params, *args: _model_fn(module, params)(*args))
    return lambda *args: apply(params, *args)


@pytest.mark.parametrize("item", STEPS)
def test_model_step_matches_reference(item):
    _check_step(item, _run_step(item, _jitted_model()))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.slow
def test_model_loop_matches_reference(loop):
    final = _run_loop(loop, _model_fn(*_model()))
    np.testing.assert_allclose(nchw(final[0]), F[f"{loop}/output"], **LOOP_TOL)


# ---- properties not taken from fixtures ---------------------------------------------------


def _oracle(config, scales, x0s):
    """A perfect network for known clean images x0s: the exact prediction at any x_t."""
    tables = jnp.asarray(config.level_gammas(scales))

    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        outs = []
        for i, (x, x0) in enumerate(zip(xs, x0s)):
            g = tables[i, times + 1]  # the network is called at t - 1
            outs.append(as_prediction(x0, eps_from_x0(x, x0, g), g, config.prediction_type))
        return outs

    return denoise_fn


def _check_recovers_clean_images(config, eta):
    scales = (4, 2, 1)
    shape = (2, 16, 16, 3)
    rng = np.random.default_rng(0)
    x0s = pyramid(rng.uniform(-0.9, 0.9, shape).astype(np.float32), scales)
    normal = lambda *lead: [rng.standard_normal(lead + s).astype(np.float32)
                            for s in level_shapes(shape, scales)]
    x_init, step_draws = normal(), normal(5)

    def run(x_init, step_draws):
        return sample(_oracle(config, scales, x0s), x_init, lambda i: [d[i] for d in step_draws],
                      config=config, scales=scales, num_steps=5, lm_outputs=None,
                      lm_mask=None, eta=eta)

    final = jax.jit(run)(x_init, step_draws)
    for got, want in zip(final, x0s):
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("prediction_type", ["v", "eps", "x0"])
@pytest.mark.parametrize("eta", [0.0, 0.5, None])
def test_perfect_denoiser_recovers_the_clean_images(prediction_type, eta):
    _check_recovers_clean_images(DiffusionConfig(prediction_type=prediction_type), eta)


@pytest.mark.parametrize("threshold", ["dynamic", "none"])
def test_perfect_denoiser_recovers_the_clean_images_with_other_thresholds(threshold):
    _check_recovers_clean_images(DiffusionConfig(threshold=threshold), 0.0)


def test_ddim_eta0_is_deterministic_and_follows_the_implied_noise():
    """With eta 0 and a perfect x0, x_s is the forward process at s with the same eps."""
    config = DiffusionConfig()
    scales = (2, 1)
    x0s = pyramid(jnp.full((1, 8, 8, 3), 0.25), scales)
    rng = np.random.default_rng(0)
    eps = [rng.standard_normal(x.shape).astype(np.float32) for x in x0s]
    tables = config.level_gammas(scales)
    xs = [x0 * np.sqrt(tables[i, 700]) + e * np.sqrt(1 - tables[i, 700])
          for i, (x0, e) in enumerate(zip(x0s, eps))]
    result = denoise_step(_oracle(config, scales, x0s), xs, 700, 300, None, config=config,
                          scales=scales, lm_outputs=None, lm_mask=None, eta=0.0)
    for i, (x_s, x0, e) in enumerate(zip(result.x_s, x0s, eps)):
        want = x0 * np.sqrt(tables[i, 300]) + e * np.sqrt(1 - tables[i, 300])
        np.testing.assert_allclose(x_s, want, atol=1e-5)


def test_sample_is_one_program():
    """The loop traces the network once and runs under jit without host round trips."""
    calls = []
    scales = (2, 1)
    shape = (2, 8, 8, 3)

    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        calls.append(times.shape)
        return [0.1 * x for x in xs]

    run = jax.jit(lambda key: sample(
        denoise_fn, initial_noise(key, shape, scales), step_noise_from_key(key, shape, scales),
        config=DiffusionConfig(), scales=scales, num_steps=50, lm_outputs=None, lm_mask=None))
    final = run(jax.random.key(0))
    run(jax.random.key(1))
    assert calls == [(2,)]
    assert [x.shape for x in final] == level_shapes(shape, scales)
    assert all(float(jnp.abs(x).max()) <= 1 for x in final)


def test_guidance_combines_uncond_and_cond_at_every_level():
    """pred = u + w (c - u) with u from the uncond text rows, c from the cond rows."""
    def denoise_fn(xs, times, lm_outputs, lm_mask, micros):
        value = lm_outputs.mean(axis=(1, 2)) * micros["scale"]
        return [x * 0 + value[:, None, None, None] for x in xs]

    xs = [jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 4, 4, 3))]
    cond = jnp.stack([jnp.full((3, 4), 1.0), jnp.full((3, 4), 2.0)])
    uncond = jnp.zeros((2, 3, 4)) + 0.5
    mask = jnp.ones((2, 3))
    result = denoise_step(denoise_fn, xs, 500, 400, None, config=DiffusionConfig(),
                          scales=(2, 1), lm_outputs=cond, lm_mask=mask,
                          micros={"scale": jnp.array([1.0, 10.0])},
                          uncond_lm_outputs=uncond, uncond_lm_mask=mask,
                          guidance_scale=3.0, eta=0.0)
    want = (0.5 + 3.0 * (jnp.array([1.0, 2.0]) - 0.5)) * jnp.array([1.0, 10.0])
    for pred in result.pred:
        np.testing.assert_allclose(pred[:, 0, 0, 0], want, rtol=1e-6)
    with pytest.raises(ValueError, match="uncond_lm_outputs"):
        denoise_step(denoise_fn, xs, 500, 400, None, config=DiffusionConfig(), scales=(2, 1),
                     lm_outputs=cond, lm_mask=mask, micros={"scale": jnp.ones(2)},
                     guidance_scale=3.0, eta=0.0)


def test_threshold_options():
    x0 = jnp.concatenate([jnp.linspace(-0.5, 0.5, 48), jnp.linspace(-3, 3, 48)]).reshape(2, 4, 4, 3)
    clipped = threshold_x0(x0, "clip")
    assert float(clipped.max()) == 1 and float(clipped.min()) == -1
    np.testing.assert_array_equal(threshold_x0(x0, "none"), x0)
    dynamic = threshold_x0(x0, "dynamic", 0.9)
    np.testing.assert_array_equal(dynamic[0], x0[0])  # within [-1, 1]: s = 1, untouched
    s = np.quantile(np.abs(np.asarray(x0[1])), 0.9)
    np.testing.assert_allclose(dynamic[1], np.clip(x0[1], -s, s) / s, rtol=1e-6)
    assert float(jnp.abs(dynamic).max()) <= 1
    with pytest.raises(ValueError, match="clip, dynamic, none"):
        threshold_x0(x0, "tanh")


def test_step_argument_checks():
    xs = [jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 2, 2, 3))]
    kwargs = dict(config=DiffusionConfig(), scales=(2, 1), lm_outputs=None, lm_mask=None)
    with pytest.raises(ValueError, match="adds noise"):
        denoise_step(lambda xs, *_: xs, xs, 10, None, None, **kwargs)
    with pytest.raises(ValueError, match="eta"):
        denoise_step(lambda xs, *_: xs, xs, 10, None, None, eta=1.5, **kwargs)


def test_starting_noise_is_independent_of_every_step_draw():
    """The sampler's start and its per-step noise come from one key: no step may reuse the
    starting draw (fold_in(key, 1) once fed both)."""
    from mdm_jax.sampling.sampler import sampler_noise
    shape, scales = (4, 16, 16, 3), (2, 1)
    x_init, step_noise = sampler_noise(jax.random.key(0), shape, scales)
    for i in range(60):
        for start, draw in zip(x_init, step_noise(i)):
            corr = np.corrcoef(np.ravel(start), np.ravel(draw))[0, 1]
            assert abs(corr) < 0.15, (i, corr)


@pytest.mark.slow
def test_kernels_cast_before_the_loop_give_the_same_samples():
    """Casting the kernels to bfloat16 once is what each layer did at every use."""
    from mdm_jax.models import build_model
    from mdm_jax.sampling.sampler import make_sampler

    model_config, params = _model()[0].model.to_dict(), _model()[1]
    module = build_model(ml_collections.ConfigDict({**model_config, "dtype": "bfloat16"}))
    shape = nhwc(F["loop_ddpm_cfg3/input/noise"]).shape
    lm, mask = COND["lm_outputs"], COND["lm_mask"]
    runs = [make_sampler(module, CONFIG, SCALES, shape, sampler="ddpm",
                         num_steps=1, eta=0.0, guidance_scale=2.0, cast_kernels=cast)
            (params, jax.random.key(0), None, lm, mask, UNCOND["uncond_lm_outputs"],
             UNCOND["uncond_lm_mask"])
            for cast in (False, True)]
    for old, new in zip(*runs):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))


def _called_jaxprs(eqn):
    from mdm_jax.models.flops import sub_jaxprs
    return [sub for value in eqn.params.values() for sub in sub_jaxprs(value)]


def _dot_products(jaxpr):
    """dot_general equations in a jaxpr and every jaxpr it calls, per call."""
    return sum(int(eqn.primitive.name == "dot_general")
               + sum(_dot_products(sub) for sub in _called_jaxprs(eqn))
               for eqn in jaxpr.eqns)


def _loop_body(jaxpr):
    """The body of the first loop (fori_loop with a fixed trip count is a scan)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            return eqn.params["jaxpr" if eqn.primitive.name == "scan" else "body_jaxpr"].jaxpr
        for sub in _called_jaxprs(eqn):
            body = _loop_body(sub)
            if body is not None:
                return body
    return None


@pytest.mark.slow
def test_text_conditioning_leaves_the_sampling_loop_with_the_same_samples():
    """The innermost UNet's text layers and every attention layer's text keys and values
    (kv_cond) run once, before the loop, and the samples are bit-identical."""
    import flax

    from mdm_jax.models import build_model
    from mdm_jax.sampling.sampler import make_sampler

    model_config, params = _model()[0].model.to_dict(), _model()[1]
    module = build_model(ml_collections.ConfigDict({**model_config, "dtype": "bfloat16"}))
    shape = nhwc(F["loop_ddpm_cfg3/input/noise"]).shape
    args = (params, jax.random.key(0), None, COND["lm_outputs"], COND["lm_mask"],
            UNCOND["uncond_lm_outputs"], UNCOND["uncond_lm_mask"])
    samplers = [make_sampler(module, CONFIG, SCALES, shape, sampler="ddpm", num_steps=2,
                             eta=0.0, guidance_scale=2.0, condition_once=once)
                for once in (False, True)]
    for old, new in zip(*(run(*args) for run in samplers)):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))

    text_layers = [path for path in flax.traverse_util.flatten_dict(params)
                   if path[-1] == "kernel" and
                   any(name in ("kv_cond", "lm_proj", "cond_emb") or name.startswith("lm_head")
                       for name in path)]
    assert sum("kv_cond" in path for path in text_layers) >= 2
    old_body, new_body = (_loop_body(jax.make_jaxpr(run)(*args).jaxpr) for run in samplers)
    assert _dot_products(old_body) - _dot_products(new_body) == len(text_layers)


@pytest.mark.slow
def test_labels_processed_before_the_loop_give_the_same_guided_samples():
    from mdm_jax.models import build_model, init_params
    from mdm_jax.sampling.sampler import make_sampler
    from test_models import small_nested_config

    cfg = small_nested_config(num_classes=5)
    rng = np.random.default_rng(0)  # non-zero output layers, so that labels show
    params = jax.tree_util.tree_map(
        lambda v: v + rng.normal(0, 0.05, v.shape).astype(v.dtype),
        init_params(cfg, jax.random.key(0), 32))
    labels = jnp.array([1, 3])
    runs = [make_sampler(build_model(cfg), CONFIG, (2, 1), (2, 32, 32, 3), sampler="ddim",
                         num_steps=2, eta=0.0, guidance_scale=3.0, condition_once=once)
            (params, jax.random.key(0), labels, None, None, None, None)
            for once in (False, True)]
    for old, new in zip(*runs):
        np.testing.assert_allclose(np.asarray(old), np.asarray(new), rtol=1e-6, atol=1e-6)
    assert not np.allclose(runs[1][0][0], runs[1][0][1], atol=1e-3)
