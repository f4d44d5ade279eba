"""Diffusion math: noise schedules, the multi-resolution forward process, loss, samplers."""
from mdm_jax.diffusion.config import (
    DiffusionConfig,
    level_batch_sizes,
    level_fractions,
)
from mdm_jax.diffusion.dpm_solver import dpm_solver_sample, solver_coefficients
from mdm_jax.diffusion.loss import (
    batch_loss,
    example_weights,
    multires_loss,
    sample_loss_noise,
)
from mdm_jax.diffusion.process import (
    add_noise,
    as_prediction,
    average_pool,
    convert_prediction,
    eps_from_x0,
    level_shapes,
    pyramid,
    x0_and_eps,
)
from mdm_jax.diffusion.sampling import (
    StepResult,
    denoise_step,
    guidance_batch,
    guided_prediction,
    initial_noise,
    sample,
    step_noise_from_key,
    threshold_x0,
)
from mdm_jax.diffusion.schedules import (
    SCHEDULE_TYPES,
    base_gammas,
    cosine_gammas,
    ddpm_gammas,
    deepfloyd_gammas,
    level_gammas,
    respaced_timesteps,
    shift,
    vdm_loss_weights,
)
