"""Joint sampling of all resolution levels: one network call per step (DDPM or DDIM).

Time convention (the reference's): a step goes from gamma index t to s < t and calls the
network at time t - 1. Levels are lists of NHWC arrays, highest resolution first.
Randomness comes from the caller (arrays, or a function of the step index), so a recorded
draw can be replayed and a PRNG key can be folded in per step inside jit.
"""
from typing import List, NamedTuple

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import process
from mdm_jax.diffusion.schedules import respaced_timesteps


class StepResult(NamedTuple):
    x_s: List[jax.Array]  # the images at step s, per level
    x0: List[jax.Array]  # thresholded estimates of the clean images
    pred: List[jax.Array]  # network outputs after classifier-free guidance


def guidance_batch(lm_outputs, lm_mask, uncond_lm_outputs, uncond_lm_mask):
    """The doubled text batch of classifier-free guidance: [uncond; cond] on the rows."""
    if uncond_lm_outputs is None:
        raise ValueError("guidance_scale != 1 needs uncond_lm_outputs (the negative prompt).")
    text = jnp.concatenate([uncond_lm_outputs, lm_outputs])
    if lm_mask is None:
        return text, None
    return text, jnp.concatenate([uncond_lm_mask, lm_mask])


def guided_prediction(denoise_fn, xs, model_time, lm_outputs, lm_mask, micros, *,
                      guidance_scale=1.0, uncond_lm_outputs=None, uncond_lm_mask=None,
                      **model_kwargs):
    """Network outputs per level; with guidance w != 1, u + w (c - u) at every level.

    Under guidance one call runs both halves: images, times and micros duplicated, text
    [uncond; cond]. guidance_scale is static (it decides whether the batch is doubled).
    """
    micros = {} if micros is None else micros
    if guidance_scale == 1:
        return denoise_fn(xs, model_time, lm_outputs, lm_mask, micros, **model_kwargs)
    # Without text (class labels only), the caller's denoise_fn makes the null-label half.
    text, mask = ((None, None) if lm_outputs is None else
                  guidance_batch(lm_outputs, lm_mask, uncond_lm_outputs, uncond_lm_mask))
    double = lambda a: jnp.concatenate([a, a])
    outputs = denoise_fn([double(x) for x in xs], double(model_time), text, mask,
                         {k: double(v) for k, v in micros.items()}, **model_kwargs)
    guided = []
    for out in outputs:
        uncond, cond = jnp.split(out, 2)
        guided.append(uncond + guidance_scale * (cond - uncond))
    return guided


def threshold_x0(x0, threshold="clip", percentile=0.995):
    """Keeps the x0 estimate in [-1, 1]: 'clip', 'dynamic' or 'none'.

    'dynamic' is Imagen's dynamic thresholding (Saharia et al. 2022): s = the percentile of
    |x0| per example, at least 1; clip to [-s, s] and divide by s.
    """
    if threshold == "clip":
        return jnp.clip(x0, -1, 1)
    if threshold == "dynamic":
        flat = jnp.abs(x0).reshape(x0.shape[0], -1)
        s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
        s = jnp.reshape(s, (-1,) + (1,) * (x0.ndim - 1))
        return jnp.clip(x0, -s, s) / s
    if threshold == "none":
        return x0
    raise ValueError(f"Unknown threshold {threshold!r}; valid: clip, dynamic, none.")


def adds_noise(eta):
    """Whether a step draws noise: DDPM (eta None) and DDIM with eta > 0 do."""
    return eta is None or eta > 0


def _level_update(x, pred, g, g_s, noise, noise_on, *, config, eta):
    """One level from gamma g to g_s (scalars); returns (x_s, x0)."""
    x0, _ = process.x0_and_eps(pred, x, g, config.prediction_type)
    x0 = threshold_x0(x0, config.threshold, config.dynamic_threshold_percentile)
    alpha = g / g_s
    beta = 1 - alpha
    beta_tilde = beta * (1 - g_s) / (1 - g)  # variance of the DDPM posterior q(x_s | x_t, x0)
    if eta is None:
        # Mean of the DDPM posterior.
        x_s = (beta * jnp.sqrt(g_s) / (1 - g)) * x0 + (jnp.sqrt(alpha) * (1 - g_s) / (1 - g)) * x
    else:
        # DDIM: the noise implied by the (thresholded) x0, re-applied at level s.
        eps = process.eps_from_x0(x, x0, g)
        beta_tilde = eta**2 * beta_tilde
        # 1 - g_s - beta_tilde >= 0 for eta <= 1; the floor only stops rounding from
        # producing NaN where it is 0 (eta = 1 near the end of the schedule).
        x_s = jnp.sqrt(g_s) * x0 + jnp.sqrt(jnp.maximum(1 - g_s - beta_tilde, 0)) * eps
    if adds_noise(eta):
        x_s = x_s + noise_on * jnp.sqrt(beta_tilde) * noise
    return x_s.astype(x.dtype), x0


def denoise_step(denoise_fn, xs, t, s, noise, *, config, scales, lm_outputs, lm_mask,
                 micros=None, uncond_lm_outputs=None, uncond_lm_mask=None,
                 guidance_scale=1.0, eta=None, **model_kwargs):
    """All levels from gamma index t to s (int scalars, may be traced; s = t - 1 if None).

    eta None is DDPM (ancestral); a float is DDIM with that eta (0: deterministic).
    noise: per-level standard normal arrays shaped like xs, or None when no noise is drawn
    (DDIM with eta 0). As in the reference, no noise is added when t == 1.
    """
    if eta is not None and not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1] (or None for DDPM); got {eta}.")
    if adds_noise(eta) and noise is None:
        raise ValueError("This step adds noise: pass one standard normal array per level.")
    t = jnp.asarray(t, jnp.int32)
    s = t - 1 if s is None else jnp.asarray(s, jnp.int32)
    tables = jnp.asarray(config.level_gammas(tuple(scales)))
    model_time = jnp.full((xs[0].shape[0],), t - 1, jnp.int32)
    preds = guided_prediction(
        denoise_fn, xs, model_time, lm_outputs, lm_mask, micros,
        guidance_scale=guidance_scale, uncond_lm_outputs=uncond_lm_outputs,
        uncond_lm_mask=uncond_lm_mask, **model_kwargs)
    noise_on = (t != 1).astype(jnp.float32)
    results = [
        _level_update(x, pred.astype(jnp.float32), tables[i, t], tables[i, s],
                      None if noise is None else noise[i], noise_on, config=config, eta=eta)
        for i, (x, pred) in enumerate(zip(xs, preds))]
    return StepResult([r[0] for r in results], [r[1] for r in results], list(preds))


def sample(denoise_fn, x_init, step_noise, *, config, scales, num_steps, lm_outputs,
           lm_mask, micros=None, uncond_lm_outputs=None, uncond_lm_mask=None,
           guidance_scale=1.0, eta=None, **model_kwargs):
    """Runs num_steps respaced steps from x_init (per level); returns every level in [-1, 1].

    x_init: the starting noise of every level (see `initial_noise`). step_noise(i) returns
    the per-level noise of step i (i may be traced); it is not called for DDIM with eta 0.
    The loop is a lax.fori_loop over a constant array of time steps: one program, no host
    round trip per step.
    """
    timesteps = jnp.asarray(respaced_timesteps(num_steps, config.num_diffusion_steps))

    def one_step(i, xs):
        noise = step_noise(i) if adds_noise(eta) else None
        return denoise_step(
            denoise_fn, xs, timesteps[i], timesteps[i + 1], noise, config=config,
            scales=scales, lm_outputs=lm_outputs, lm_mask=lm_mask, micros=micros,
            uncond_lm_outputs=uncond_lm_outputs, uncond_lm_mask=uncond_lm_mask,
            guidance_scale=guidance_scale, eta=eta, **model_kwargs).x_s

    xs = jax.lax.fori_loop(0, num_steps, one_step, list(x_init))
    return [jnp.clip(x, -1, 1) for x in xs]


def initial_noise(key, shape, scales, frame_ratios=None):
    """Standard normal starting images for every level (shape: the highest level's NHWC,
    or NTHWC clips with frame_ratios, as process.level_shapes)."""
    keys = jax.random.split(key, len(scales))
    shapes = process.level_shapes(shape, scales, frame_ratios)
    return [jax.random.normal(k, sh, jnp.float32) for k, sh in zip(keys, shapes)]


def step_noise_from_key(key, shape, scales, frame_ratios=None):
    """A `step_noise` function drawing fresh per-level noise for step i from fold_in(key, i)."""
    shapes = process.level_shapes(shape, scales, frame_ratios)

    def step_noise(i):
        keys = jax.random.split(jax.random.fold_in(key, i), len(shapes))
        return [jax.random.normal(k, sh, jnp.float32) for k, sh in zip(keys, shapes)]

    return step_noise
