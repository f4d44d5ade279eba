"""DPM-Solver++(2M) against the exact probability-flow ODE of Gaussian data.

Toy: every pixel of every level is independent N(MU, S^2) data, so the optimal denoiser is
closed form at any gamma, E[x0 | x_t] = MU + a S^2 / (a^2 S^2 + sigma^2) (x_t - a MU), and so
is the ODE: the marginal of x_t is N(a MU, a^2 S^2 + sigma^2) and the flow, affine and
monotone, keeps the standardised value z = (x_t - a MU) / sqrt(a^2 S^2 + sigma^2) fixed.
Two levels (scales (2, 1)) each follow their own shifted schedule.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import (
    DiffusionConfig,
    as_prediction,
    dpm_solver_sample,
    eps_from_x0,
    initial_noise,
    respaced_timesteps,
    sample,
    solver_coefficients,
)

MU, S = 0.1, 0.25  # |MU| + 4 S < 1: the final clip to [-1, 1] leaves the toy's images alone
SCALES = (2, 1)
SHAPE = (2, 8, 8, 3)  # the highest level; the lowest is 4 x 4
CONFIG = DiffusionConfig(schedule_type="cosine", prediction_type="v", threshold="none")
TABLES = CONFIG.level_gammas(SCALES)


def optimal_x0(x, g):
    return MU + jnp.sqrt(g) * S**2 / (g * S**2 + 1 - g) * (x - jnp.sqrt(g) * MU)


def gaussian_denoiser(xs, model_time, lm_outputs, lm_mask, micros, **kwargs):
    """The optimal v-prediction for the toy; model_time is t - 1 (sampling's convention)."""
    del lm_outputs, lm_mask, micros, kwargs
    outputs = []
    for level, x in enumerate(xs):
        g = jnp.asarray(TABLES)[level, model_time + 1]
        x0 = optimal_x0(x, g[:, None, None, None])
        outputs.append(as_prediction(x0, eps_from_x0(x, x0, g), g, "v"))
    return outputs


def exact_samples(x_init, num_steps):
    """The ODE solved exactly from the first respaced time to the last non-zero one, then
    the final step's x0 estimate, which both samplers share: their only difference from
    this is how well they integrate the ODE."""
    timesteps = respaced_timesteps(num_steps, CONFIG.num_diffusion_steps)
    out = []
    for level, x in enumerate(x_init):
        g_start, g_end = (np.float64(TABLES[level, timesteps[k]]) for k in (0, -2))
        z = (np.asarray(x, np.float64) - np.sqrt(g_start) * MU) / np.sqrt(
            g_start * S**2 + 1 - g_start)
        x_end = np.sqrt(g_end) * MU + np.sqrt(g_end * S**2 + 1 - g_end) * z
        out.append(np.asarray(optimal_x0(x_end, g_end)))
    return out


def max_error(levels, reference):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - r)))
               for x, r in zip(levels, reference))


@jax.jit
def run_dpm(x_init):
    return dpm_solver_sample(gaussian_denoiser, x_init, config=CONFIG, scales=SCALES,
                             num_steps=25, lm_outputs=None, lm_mask=None)


@jax.jit
def run_ddim(x_init):
    return sample(gaussian_denoiser, x_init, None, config=CONFIG, scales=SCALES,
                  num_steps=25, lm_outputs=None, lm_mask=None, eta=0.0)


def test_25_steps_follow_the_exact_ode_much_closer_than_ddim():
    x_init = initial_noise(jax.random.key(0), SHAPE, SCALES)
    exact = exact_samples(x_init, 25)
    dpm, ddim = run_dpm(x_init), run_ddim(x_init)
    assert [x.shape for x in dpm] == [(2, 8, 8, 3), (2, 4, 4, 3)]
    dpm_error, ddim_error = max_error(dpm, exact), max_error(ddim, exact)
    # Measured on CPU: 8.8e-4 and 2.2e-2.
    assert dpm_error < 2e-3, dpm_error
    assert ddim_error > 10 * dpm_error, (dpm_error, ddim_error)


def test_error_falls_as_the_square_of_the_step_size():
    """Second order: doubling the steps (past the first few dozen) divides the error by
    about 4 (measured 3.6 from 200 to 400), where first-order DDIM's halves."""
    x_init = initial_noise(jax.random.key(3), SHAPE, SCALES)
    errors = [max_error(dpm_solver_sample(gaussian_denoiser, x_init, config=CONFIG,
                                          scales=SCALES, num_steps=n, lm_outputs=None,
                                          lm_mask=None), exact_samples(x_init, n))
              for n in (200, 400)]
    assert errors[0] / errors[1] > 3, errors


def test_first_and_last_steps_are_first_order():
    c = solver_coefficients(CONFIG, SCALES, 25)
    assert c.correction.shape == (25, 2)
    np.testing.assert_array_equal(c.correction[[0, -1]], 0)
    assert np.all(c.correction[1:-1] > 0)
    # The last step lands on gamma = 1: x_s is the x0 estimate alone.
    np.testing.assert_array_equal(c.x_scale[-1], 0)
    np.testing.assert_allclose(c.x0_scale[-1], 1, rtol=1e-6)
    # The levels have their own schedules, hence their own coefficients.
    assert not np.allclose(c.x_scale[:, 0], c.x_scale[:, 1])


def test_with_only_first_order_steps_it_is_ddim():
    """Two steps are both first order (nothing before the first, lambda = inf after the
    last), and first-order DPM-Solver++ is DDIM with eta 0."""
    x_init = initial_noise(jax.random.key(1), SHAPE, SCALES)
    kwargs = dict(config=CONFIG, scales=SCALES, num_steps=2, lm_outputs=None, lm_mask=None)
    dpm = dpm_solver_sample(gaussian_denoiser, x_init, **kwargs)
    ddim = sample(gaussian_denoiser, x_init, None, eta=0.0, **kwargs)
    for a, b in zip(dpm, ddim):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_guidance_combines_both_halves_of_one_call():
    """A denoiser whose output depends on the text: guidance w gives u + w (c - u)."""
    def text_denoiser(xs, model_time, lm_outputs, lm_mask, micros):
        base = gaussian_denoiser(xs, model_time, None, None, micros)
        return [b + 0.1 * lm_outputs[:, :1, :1, :1] for b in base]

    x_init = initial_noise(jax.random.key(2), SHAPE, SCALES)
    cond, uncond = jnp.ones((2, 1, 1, 1)), jnp.zeros((2, 1, 1, 1))
    kwargs = dict(config=CONFIG, scales=SCALES, num_steps=5, lm_mask=None)
    guided = dpm_solver_sample(text_denoiser, x_init, lm_outputs=cond, uncond_lm_outputs=uncond,
                               guidance_scale=3.0, **kwargs)
    # u + 3 (c - u) with c = 1 and u = 0 is the prediction at text value 3.
    direct = dpm_solver_sample(text_denoiser, x_init, lm_outputs=3 * cond, **kwargs)
    for a, b in zip(guided, direct):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uncond_lm_outputs"):
        dpm_solver_sample(text_denoiser, x_init, lm_outputs=cond, guidance_scale=3.0, **kwargs)
