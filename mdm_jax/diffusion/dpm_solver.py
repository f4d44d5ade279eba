"""DPM-Solver++(2M) over all resolution levels jointly (Lu et al. 2022, arXiv:2211.01095).

The multistep second-order solver of the probability-flow ODE in data prediction: one
network call per step gives every level's (thresholded) x0 estimate, and each level moves
with its own lambda = log(alpha / sigma), alpha = sqrt(gamma), sigma = sqrt(1 - gamma), read
from its own shifted gamma table. Time steps and the network's time (t - 1) are those of
`sampling.sample`. The first step has no previous estimate and the last step lands on
gamma = 1 (lambda = inf), so both are first order, which is DDIM with eta 0.

The time steps are static, so every step's coefficients are computed on the host in
float64 (where lambda = inf is harmless) and enter the jitted loop as constants.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion import process
from mdm_jax.diffusion.sampling import guided_prediction, threshold_x0
from mdm_jax.diffusion.schedules import respaced_timesteps


class SolverCoefficients(NamedTuple):
    """Per step and level, [num_steps, L]: x_s = x_scale x_t + x0_scale D, where
    D = x0 + correction (x0 - previous x0) is the second-order data estimate."""
    x_scale: np.ndarray      # sigma_s / sigma_t
    x0_scale: np.ndarray     # alpha_s - sigma_s alpha_t / sigma_t = -alpha_s (e^-h - 1)
    correction: np.ndarray   # 1 / (2 r) = h / (2 h_last); 0 for a first-order step


def solver_coefficients(config, scales, num_steps):
    """The update coefficients of a num_steps DPM-Solver++(2M) run, float32."""
    timesteps = respaced_timesteps(num_steps, config.num_diffusion_steps)
    gammas = config.level_gammas(tuple(scales)).astype(np.float64)[:, timesteps].T
    alpha, sigma = np.sqrt(gammas), np.sqrt(1 - gammas)
    if not (np.all(alpha[:-1] > 0) and np.all(sigma[:-1] > 0)):
        raise ValueError(
            f"A gamma of 0 or 1 before the last of {num_steps} steps makes lambda infinite; "
            "use fewer steps or a schedule whose gammas lie strictly inside (0, 1).")
    ratio = sigma[1:] / sigma[:-1]
    x0_scale = alpha[1:] - ratio * alpha[:-1]
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at the final gamma = 1
    h = lam[1:] - lam[:-1]
    correction = np.zeros_like(h)
    # Step i (from timesteps[i] to timesteps[i + 1]) corrects with the estimate of step i - 1;
    # step 0 has none, and the last step's h is infinite (lower order final).
    correction[1:-1] = h[1:-1] / (2 * h[:-2])
    return SolverCoefficients(*(c.astype(np.float32) for c in (ratio, x0_scale, correction)))


def dpm_solver_sample(denoise_fn, x_init, *, config, scales, num_steps, lm_outputs, lm_mask,
                      micros=None, uncond_lm_outputs=None, uncond_lm_mask=None,
                      guidance_scale=1.0, **model_kwargs):
    """num_steps DPM-Solver++(2M) steps from x_init (per level); every level in [-1, 1].

    Arguments as `sampling.sample`, without noise (the solver is deterministic). One
    lax.fori_loop carrying the images and the previous x0 estimate of every level.
    """
    scales = tuple(scales)
    timesteps = jnp.asarray(respaced_timesteps(num_steps, config.num_diffusion_steps))
    tables = jnp.asarray(config.level_gammas(scales))
    coeffs = SolverCoefficients(*(jnp.asarray(c) for c in
                                  solver_coefficients(config, scales, num_steps)))

    def one_step(i, carry):
        xs, previous_x0 = carry
        t = timesteps[i]
        model_time = jnp.full((xs[0].shape[0],), t - 1, jnp.int32)
        preds = guided_prediction(
            denoise_fn, xs, model_time, lm_outputs, lm_mask, micros,
            guidance_scale=guidance_scale, uncond_lm_outputs=uncond_lm_outputs,
            uncond_lm_mask=uncond_lm_mask, **model_kwargs)
        new_xs, new_x0 = [], []
        for level, (x, pred, prev) in enumerate(zip(xs, preds, previous_x0)):
            x0, _ = process.x0_and_eps(pred.astype(jnp.float32), x, tables[level, t],
                                       config.prediction_type)
            x0 = threshold_x0(x0, config.threshold, config.dynamic_threshold_percentile)
            d = x0 + coeffs.correction[i, level] * (x0 - prev)
            x_s = coeffs.x_scale[i, level] * x + coeffs.x0_scale[i, level] * d
            new_xs.append(x_s.astype(x.dtype))
            new_x0.append(x0)
        return new_xs, new_x0

    start = (list(x_init), [jnp.zeros(x.shape, jnp.float32) for x in x_init])
    xs, _ = jax.lax.fori_loop(0, num_steps, one_step, start)
    return [jnp.clip(x, -1, 1) for x in xs]
