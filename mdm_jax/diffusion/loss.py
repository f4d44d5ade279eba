"""The multi-resolution training loss (Matryoshka diffusion).

One time step per example shared by all levels, independent noise per level, each level's
gamma from its own shifted table. The random draws are inputs, so that a recorded draw can
be replayed exactly; `sample_loss_noise` makes them from a PRNG key for training.
"""
import jax
import jax.numpy as jnp

from mdm_jax.diffusion import process, schedules
from mdm_jax.diffusion.config import level_batch_sizes, level_fractions


def _first_rows(x, rows, groups):
    """The first rows // groups rows of each of `groups` equal blocks of x (the loss's side
    of mdm_jax/models/rows.py, which this package may not import)."""
    blocks = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    return blocks[:, :rows // groups].reshape((rows,) + x.shape[1:])


def _pad_rows(x, rows, groups):
    """Per-row values of the rows a level ran on back in their batch rows, 0 elsewhere."""
    blocks = x.reshape((groups, x.shape[0] // groups))
    return jnp.pad(blocks, ((0, 0), (0, (rows - x.shape[0]) // groups))).reshape(rows)


def sample_loss_noise(key, images, scales, num_steps, frame_ratios=None):
    """Draws the loss's randomness: times int32 [B] in [0, num_steps) and per-level eps.

    The noise is float32 whatever the image dtype: the loss math runs in float32.
    """
    time_key, *level_keys = jax.random.split(key, len(scales) + 1)
    times = jax.random.randint(time_key, (images.shape[0],), 0, num_steps)
    shapes = process.level_shapes(images.shape, scales, frame_ratios)
    noises = [jax.random.normal(k, shape, jnp.float32) for k, shape in zip(level_keys, shapes)]
    return times, noises


def multires_loss(denoise_fn, images, times, noises, *, config, scales, lm_outputs=None,
                  lm_mask=None, micros=None, frame_ratios=None, row_groups=1, **model_kwargs):
    """Per-example loss [B] and an aux dict.

    denoise_fn(xs, times, lm_outputs, lm_mask, micros, **model_kwargs) returns the network
    outputs for the noisy images xs (NHWC, highest resolution first). images are the clean
    highest-resolution images in [-1, 1] (clips [B, T, H, W, C] with frame_ratios, see
    process.pyramid); times int [B] in [0, N) (the network sees t, the noise level is
    gamma[t + 1]); noises the per-level eps, shaped as `process.level_shapes`.

    With config.mixed_ratio, level i only runs on the first int(m_i B) rows (m the cumulated
    ratio fractions); its loss is divided by m_i so its expected weight is kept. Row counts
    are python ints from the static batch size: no recompiles from batch to batch. With
    row_groups > 1 the batch is that many equal blocks (one per device) and a level runs
    on the first rows of each (models/rows.py); denoise_fn then gets row_groups too.

    aux["mse"]: per level, mean squared error [B] before level weights and the mixed-ratio
    rescaling, 0 on rows a level skipped. aux["example_weight"]: [B], the VDM weights of
    the time steps when config.use_vdm_loss_weights, else ones; reduce with `batch_loss`.
    """
    scales = tuple(scales)
    num_levels = len(scales)
    config.check_levels(num_levels)
    if len(noises) != num_levels:
        raise ValueError(f"Got {len(noises)} noise arrays for {num_levels} levels.")
    batch = images.shape[0]
    rows = level_batch_sizes(config.mixed_ratio, batch, num_levels, row_groups)
    if min(rows) < 1:
        raise ValueError(f"A batch of {batch} leaves a level with no rows under mixed_ratio "
                         f"{config.mixed_ratio}; use a larger batch.")
    fractions = level_fractions(config.mixed_ratio, num_levels)
    level_weights = config.multi_res_weights or (1.0,) * num_levels

    gammas = jnp.asarray(config.level_gammas(scales))[:, times + 1]  # [levels, B]
    clean = process.pyramid(images, scales, frame_ratios)
    x_t = [process.add_noise(x, eps, g) for x, eps, g in zip(clean, noises, gammas)]
    if row_groups > 1:
        model_kwargs = {**model_kwargs, "row_groups": row_groups}
    take = lambda x, r: _first_rows(x, r, row_groups)
    outputs = denoise_fn([take(x, r) for x, r in zip(x_t, rows)], times, lm_outputs, lm_mask,
                         {} if micros is None else micros, **model_kwargs)

    loss = jnp.zeros((batch,), jnp.float32)
    mses = []
    for i in range(num_levels):
        r = rows[i]
        pred = process.convert_prediction(
            outputs[i].astype(jnp.float32), take(x_t[i], r), take(gammas[i], r),
            config.prediction_type, config.loss_target_type)
        target = process.as_prediction(
            take(clean[i], r), take(noises[i], r), take(gammas[i], r), config.loss_target_type)
        mse = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))
        mse = _pad_rows(mse, batch, row_groups)  # rows this level skipped count 0
        mses.append(mse)
        if i == 0 or config.use_double_loss:
            loss = loss + level_weights[i] * (mse / fractions[i])

    return loss, {"mse": mses, "example_weight": example_weights(config, times)}


def example_weights(config, times):
    """[B]: the VDM weights of the time steps when config.use_vdm_loss_weights, else ones."""
    if config.use_vdm_loss_weights:
        vdm = schedules.vdm_loss_weights(config.base_gammas())
        return jnp.asarray(vdm)[times + 1]
    return jnp.ones(times.shape, jnp.float32)


def batch_loss(loss, example_weight):
    """The scalar to minimise: the example_weight-weighted mean of the per-example losses."""
    return jnp.sum(loss * example_weight) / jnp.sum(example_weight)
