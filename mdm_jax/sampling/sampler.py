"""The jitted samplers: DDPM, DDIM or DPM-Solver++(2M) over every level of a model.

Sampling is one jitted program (the whole loop on device), its batch split over the mesh.
"""
import jax
import jax.numpy as jnp

from mdm_jax import diffusion
from mdm_jax.models import config as model_config_lib
from mdm_jax.models import text_cache
from mdm_jax.parallel import sharding

SAMPLERS = ("ddpm", "ddim", "dpm++")


def sampler_noise(key, shape, scales, frame_ratios=None):
    """(starting noise per level, step_noise(i)) from one key, through separate subkeys:
    the start must not equal any step's draw (step_noise folds in the step index, and
    fold_in(key, 1) of one key is step 1's draw)."""
    init_key, step_key = jax.random.split(key)
    return (diffusion.initial_noise(init_key, shape, scales, frame_ratios),
            diffusion.step_noise_from_key(step_key, shape, scales, frame_ratios))


def kernels_in_compute_dtype(params, dtype):
    """Every Dense and Conv kernel cast to the model's compute dtype. The layers cast them
    at each use anyway (flax's promote_dtype), so a model's output is bit-identical; cast
    once before the loop, the loop reads half the bytes and converts nothing per step.
    The up blocks' resample kernels stay float32: the sub-pixel up conv sums their taps
    before it casts (models/upsample.py), and rounding first would change the sums."""
    def cast(path, leaf):
        keys = [str(getattr(p, "key", "")) for p in path]
        is_kernel = keys[-1] == "kernel"
        up_resample = (len(keys) >= 3 and keys[-2] == "resample"
                       and keys[-3].startswith("up_blocks"))
        return leaf.astype(dtype) if is_kernel and not up_resample else leaf
    return jax.tree_util.tree_map_with_path(cast, params)


def make_sampler(model, diffusion_config, scales, shape, *, sampler, num_steps, eta,
                 guidance_scale, mesh=None, cast_kernels=True, condition_once=True):
    """A jitted fn(params, key, labels, lm, mask, uncond_lm, uncond_mask) -> levels.

    shape: the top level's, NHWC, or NTHWC for a video model.
    DDPM, DDIM (with eta) or DPM-Solver++(2M). The starting noise is drawn inside from
    `key`; with a mesh it is laid out over the batch sharding, so no host array of the
    batch's size is made. Class labels guide through the null label (-1), text through
    the negative prompt's encoding. `cast_kernels=False` keeps the float32 kernels in the
    loop, `condition_once=False` processes the text and labels at every step (the old
    paths, for benchmarks: the result is the same).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}.")
    scales = tuple(scales)
    frame_ratios = model_config_lib.nest_frame_ratios(model.model)  # None for images
    batch = None if mesh is None else sharding.batch_sharding(mesh, len(shape))

    def run(params, key, labels, lm, mask, uncond_lm, uncond_mask):
        if cast_kernels:
            params = kernels_in_compute_dtype(params, model.dtype)
        text = dict(lm_outputs=lm, lm_mask=mask, uncond_lm_outputs=uncond_lm,
                    uncond_lm_mask=uncond_mask)
        if condition_once:
            denoise = conditioned_denoiser(model, params, labels, guidance_scale, **text)
            # The text is in the denoiser now: the loop only doubles the images.
            text = dict.fromkeys(text)
        else:
            def denoise(xs, t, lm_, mask_, micros):
                kwargs = {}
                if labels is not None:
                    doubled = xs[0].shape[0] != labels.shape[0]
                    kwargs["class_labels"] = (
                        jnp.concatenate([jnp.full_like(labels, -1), labels])
                        if doubled else labels)
                return model.apply({"params": params}, xs, t, lm_, mask_, micros, **kwargs)

        x_init, step_noise = sampler_noise(key, shape, scales, frame_ratios)
        if batch is not None:
            x_init = [jax.lax.with_sharding_constraint(x, batch) for x in x_init]
        common = dict(config=diffusion_config, scales=scales, num_steps=num_steps,
                      guidance_scale=guidance_scale, **text)
        if sampler == "dpm++":
            return diffusion.dpm_solver_sample(denoise, x_init, **common)
        return diffusion.sample(denoise, x_init, step_noise,
                                eta=None if sampler == "ddpm" else eta, **common)

    if batch is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=[batch] * len(scales))


def conditioned_denoiser(model, params, labels, guidance_scale, *, lm_outputs, lm_mask,
                         uncond_lm_outputs, uncond_lm_mask):
    """A denoise_fn(xs, t, _, _, micros) for diffusion.sample whose text and labels are
    processed once, here, outside the sampling loop: the innermost UNet's conditioning
    and every attention layer's text keys and values (one row per image or clip). Under
    guidance they are the doubled batch, [unconditional; conditional], as the loop
    doubles the images."""
    if guidance_scale != 1:
        if lm_outputs is not None:
            lm_outputs, lm_mask = diffusion.guidance_batch(
                lm_outputs, lm_mask, uncond_lm_outputs, uncond_lm_mask)
        if labels is not None:
            labels = jnp.concatenate([jnp.full_like(labels, -1), labels])
    variables = {"params": params}
    cond = model.apply(variables, lm_outputs, lm_mask, labels, method=model.condition)
    if cond.tokens is not None:
        variables = {**variables, **text_cache.text_keys_values_collection(
            params, cond.tokens, model.dtype)}

    def denoise(xs, t, _lm, _mask, micros):
        return model.apply(variables, xs, t, micros=micros, conditioning=cond)
    return denoise
