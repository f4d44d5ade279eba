"""Noise schedules as gamma tables (gamma = alpha-bar, the signal fraction).

A table has N + 1 entries: gammas[0] = 1 is the clean image and gammas[k] the noise level
after k of the N diffusion steps. Base tables are computed in float64 numpy and cast to
float32 once, as the reference does, so that they match its numbers to float32 rounding.
Everything here runs on the host at trace time; the per-step math gathers from the tables.
"""
import numpy as np

SCHEDULE_TYPES = ("cosine", "ddpm", "deepfloyd")


def cosine_gammas(num_steps):
    """Cosine schedule on log-SNR in [-5, 5] (Salimans & Ho, progressive distillation)."""
    t = np.linspace(0.0, 1.0, num_steps)
    b = np.arctan(np.exp(-2.5))
    a = np.arctan(np.exp(2.5)) - b
    logsnr = -2.0 * np.log(np.tan(a * t + b))
    gammas = 1.0 / (1.0 + np.exp(-logsnr))
    return np.concatenate([[1.0], gammas])


def _gammas_from_betas(betas):
    # exp(cumsum(log)) rather than cumprod: the reference's form, kept for equal rounding.
    return np.exp(np.cumsum(np.log(1.0 - np.asarray(betas, np.float64))))


def ddpm_gammas(num_steps, beta_start, beta_end):
    """Linear betas from beta_start to beta_end (Ho et al. 2020)."""
    betas = np.concatenate([[0.0], np.linspace(beta_start, beta_end, num_steps)])
    return _gammas_from_betas(betas)


def deepfloyd_gammas(num_steps):
    """squaredcos_cap_v2: betas from a squared-cosine alpha-bar, capped at 0.999."""
    def alpha_bar(s):
        return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

    k = np.arange(num_steps, dtype=np.float64)
    betas = np.minimum(1.0 - alpha_bar((k + 1) / num_steps) / alpha_bar(k / num_steps), 0.999)
    return _gammas_from_betas(np.concatenate([[0.0], betas]))


def base_gammas(schedule_type, num_steps, beta_start=1e-4, beta_end=0.02):
    """The unshifted float32 table [num_steps + 1] of a named schedule."""
    if schedule_type == "cosine":
        gammas = cosine_gammas(num_steps)
    elif schedule_type == "ddpm":
        gammas = ddpm_gammas(num_steps, beta_start, beta_end)
    elif schedule_type == "deepfloyd":
        gammas = deepfloyd_gammas(num_steps)
    else:
        raise ValueError(
            f"Unknown schedule_type {schedule_type!r}; valid names: {', '.join(SCHEDULE_TYPES)}.")
    return gammas.astype(np.float32)


def shift(gammas, scale, power=1.0):
    """Divides the SNR of a float32 table by scale**power (no shift for scale <= 1).

    Computed in float32 in the reference's order of operations. gamma = 1 (infinite SNR)
    stays 1: the divisions by zero give inf and 1/inf, hence the silenced warnings.
    """
    gammas = np.asarray(gammas, np.float32)
    if scale <= 1:
        return gammas
    with np.errstate(divide="ignore"):
        snr = gammas / (1 - gammas)
        return (1 / (1 + 1 / (snr / scale**power))).astype(np.float32)


def level_gammas(gammas, scales, power=1.0):
    """Per-level tables [len(scales), N + 1], highest resolution first.

    scales[i] is level i's side ratio to the lowest level (nest_ratio + [1]); the highest
    resolution is shifted most, so it is noisier at the same step, and the lowest not at all.
    """
    return np.stack([shift(gammas, s, power) for s in scales])


def vdm_loss_weights(gammas):
    """Per-step loss weights of Variational Diffusion Models, read at index time + 1.

    w_k = g_{k-1} (1 - g_k) / ((1 - g_{k-1}) g_k) - 1 for k >= 2, the first value repeated
    to fill indices 0 and 1. Computed in float32 from the float32 table, as the reference
    does: the "- 1" cancels most digits, so float64 would give visibly different numbers.
    """
    g = np.asarray(gammas, np.float32)
    g_k, g_prev = g[2:], g[1:-1]
    w = g_prev * (1 - g_k) / (1 - g_prev) / g_k - 1
    return np.concatenate([w[:1], w[:1], w]).astype(np.float32)


def respaced_timesteps(num_inference_steps, num_diffusion_steps):
    """Decreasing gamma indices [n + 1] visited by an n-step sampler, ending at 0.

    round(arange(n + 1) * (N + 1) / (n + 1)) with numpy's half-to-even rounding, reversed:
    N = 1000, n = 4 gives [801, 601, 400, 200, 0]. With n = N it is every step.
    """
    if not 1 <= num_inference_steps <= num_diffusion_steps:
        raise ValueError(
            f"num_inference_steps must be in [1, {num_diffusion_steps}], "
            f"got {num_inference_steps}.")
    ratio = (num_diffusion_steps + 1) / (num_inference_steps + 1)
    return np.round(np.arange(num_inference_steps + 1) * ratio)[::-1].astype(np.int32)
