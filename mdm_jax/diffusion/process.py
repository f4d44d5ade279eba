"""The multi-resolution forward process and conversions between prediction types.

Images are NHWC, video clips NTHWC. gamma is one noise level per example, [B], broadcast
over the rest.
A network output is one of: 'v' (sqrt(g) eps - sqrt(1-g) x0), 'eps' (the noise), 'x0'.
"""
import jax.numpy as jnp


def _per_example(gamma, x):
    """[B] -> [B, 1, 1, 1] (as many trailing ones as x has dimensions after the batch)."""
    return jnp.reshape(gamma, (-1,) + (1,) * (x.ndim - 1))


def average_pool(images, factor):
    """Means over non-overlapping factor x factor blocks of an NHWC batch."""
    b, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"Image size {h}x{w} is not divisible by the pooling factor {factor}.")
    blocks = images.reshape(b, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(2, 4))


def level_shapes(shape, scales, frame_ratios=None):
    """Shapes of every level, given the highest level's NHWC (or, with frame_ratios,
    NTHWC) shape."""
    if frame_ratios is None:
        b, h, w, c = shape
        return [(b, h * s // scales[0], w * s // scales[0], c) for s in scales]
    b, t, h, w, c = shape
    return [(b, t * f // frame_ratios[0], h * s // scales[0], w * s // scales[0], c)
            for s, f in zip(scales, frame_ratios)]


def _local_ratio(ratios, i, what):
    high, low = ratios[i], ratios[i + 1]
    if high % low:
        raise ValueError(f"{what} {list(ratios)}: {high} is not a multiple of {low}.")
    return high // low


def pyramid(images, scales, frame_ratios=None):
    """[images, pooled, ...]: level i pooled by scales[i-1] / scales[i] from level i - 1.

    scales are side ratios to the lowest level, highest first (nest_ratio + [1]). For
    clips [B, T, H, W, C], frame_ratios are the frame counts' ratios to the lowest level's:
    each frame is pooled, and level i keeps every r-th frame of level i - 1 (frames 0, r,
    2r, ...), r = frame_ratios[i-1] / frame_ratios[i], the ratio to the level above.
    (The reference subsamples by the ratio to the top level, which picks the wrong
    frames once two temporal levels are nested.)
    """
    levels = [images]
    for i in range(len(scales) - 1):
        factor = _local_ratio(scales, i, "scales")
        x = levels[-1]
        if frame_ratios is None:
            levels.append(average_pool(x, factor))
            continue
        b, t = x.shape[:2]
        pooled = average_pool(x.reshape((b * t,) + x.shape[2:]), factor)
        pooled = pooled.reshape((b, t) + pooled.shape[1:])
        levels.append(pooled[:, ::_local_ratio(frame_ratios, i, "frame_ratios")])
    return levels


def add_noise(x0, eps, gamma):
    """x_t = sqrt(g) x0 + sqrt(1 - g) eps."""
    g = _per_example(gamma, x0)
    return jnp.sqrt(g) * x0 + jnp.sqrt(1 - g) * eps


def eps_from_x0(x_t, x0, gamma):
    """The noise that takes x0 to x_t: (x_t - sqrt(g) x0) / sqrt(1 - g)."""
    g = _per_example(gamma, x_t)
    return (x_t - jnp.sqrt(g) * x0) / jnp.sqrt(1 - g)


def x0_and_eps(output, x_t, gamma, prediction_type):
    """Splits a network output into its estimates of (x0, eps) given x_t.

    For 'v' both come from closed forms that never divide by sqrt(1 - g) or sqrt(g), so
    they stay accurate at the ends of the schedule.
    """
    g = _per_example(gamma, x_t)
    if prediction_type == "v":
        x0 = jnp.sqrt(g) * x_t - jnp.sqrt(1 - g) * output
        eps = jnp.sqrt(1 - g) * x_t + jnp.sqrt(g) * output
    elif prediction_type == "eps":
        x0 = (x_t - jnp.sqrt(1 - g) * output) / jnp.sqrt(g)
        eps = output
    elif prediction_type == "x0":
        x0 = output
        eps = eps_from_x0(x_t, output, gamma)
    else:
        raise ValueError(f"Unknown prediction type {prediction_type!r}; valid: v, eps, x0.")
    return x0, eps


def as_prediction(x0, eps, gamma, prediction_type):
    """The quantity of the given type for a pair (x0, eps): a target or a converted output."""
    if prediction_type == "v":
        g = _per_example(gamma, x0)
        return jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    raise ValueError(f"Unknown prediction type {prediction_type!r}; valid: v, eps, x0.")


def convert_prediction(output, x_t, gamma, from_type, to_type):
    """A network output of type from_type expressed as to_type."""
    if from_type == to_type:
        return output
    x0, eps = x0_and_eps(output, x_t, gamma, from_type)
    return as_prediction(x0, eps, gamma, to_type)
