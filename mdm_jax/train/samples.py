"""Sample grids during training: every level of each sample side by side, one PNG.

Lower levels are scaled up (nearest) to the top size so the rows line up. Sampling is one
jitted program (the whole loop on device); the grid is written by process 0.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mdm_jax import diffusion


def make_sampler(model, diffusion_config, scales, num_steps, eta=None, guidance_scale=1.0):
    """Returns a jitted fn(params, key, shape, labels, lm_outputs, lm_mask, uncond) -> levels.

    Class labels get classifier-free guidance through the null label (-1); text through
    `uncond` = (lm_outputs, lm_mask) of the empty prompt.
    """
    scales = tuple(scales)

    def run(params, key, x_init, labels, lm_outputs, lm_mask, uncond):
        def denoise(xs, t, lm, mask, micros):
            kwargs = {}
            if labels is not None:
                doubled = xs[0].shape[0] != labels.shape[0]
                kwargs["class_labels"] = (jnp.concatenate([jnp.full_like(labels, -1), labels])
                                          if doubled else labels)
            return model.apply({"params": params}, xs, t, lm, mask, micros, **kwargs)

        step_noise = diffusion.step_noise_from_key(key, x_init[0].shape, scales)
        text_guided = guidance_scale != 1 and lm_outputs is not None
        return diffusion.sample(
            denoise, x_init, step_noise, config=diffusion_config, scales=scales,
            num_steps=num_steps, lm_outputs=lm_outputs, lm_mask=lm_mask,
            uncond_lm_outputs=uncond[0] if text_guided else None,
            uncond_lm_mask=uncond[1] if text_guided else None,
            guidance_scale=guidance_scale if (text_guided or labels is not None) else 1.0,
            eta=eta)

    return jax.jit(run)


def level_grid(levels):
    """Levels [L] of [N, h_i, w_i, C] in [-1, 1] -> uint8 grid, one row per sample."""
    top = levels[0].shape[1]
    rows = []
    for n in range(levels[0].shape[0]):
        tiles = []
        for level in levels:
            img = np.asarray(level[n], np.float32)
            factor = top // img.shape[0]
            tiles.append(np.repeat(np.repeat(img, factor, axis=0), factor, axis=1))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    return np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)


def write_grid(path, levels):
    grid = level_grid(levels)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(grid).save(path)
    return grid
