"""A video model's parameters from an image model's: its 2D layers are the image model's.

A video level runs every 2D layer of an image level on each frame, so an image NestedUNet's
levels fill a video NestedUNet's spatial levels (outermost first) and its innermost UNet;
the video model's temporal levels, and the temporal attention and resampling layers, keep
their fresh values. Temporal attention starts as the identity (its output layers are
zero), so a video model whose levels are all spatial computes, right after this, the
image model's output on each frame. A spatial level whose inner level is temporal keeps
its fresh (zero) adapters: the image model's were trained against another inner model,
and at zero the temporal level's fresh features don't reach it, so it starts as the image
level without its inner model; the innermost UNet gets nothing from the temporal level
and computes the image model's innermost output on its frame.
"""
import flax

from mdm_jax.models.config import levels

TEMPORAL_LAYERS = ("temporal_attn_", "temporal_resample")
ADAPTERS = ("in_adapter", "out_adapter")


def _level_paths(config):
    """The parameter subtree path of each level, outermost first."""
    return [("inner_unet",) * depth for depth in range(len(levels(config)))]


def _is_temporal_layer(key):
    return any(part.startswith(TEMPORAL_LAYERS) for part in key)


def image_to_video_params(video_params, video_config, image_params, image_config):
    """video_params (fresh, unboxed) with every 2D layer taken from image_params.

    The image model's levels go to the video model's spatial levels in order, its
    innermost UNet to the video's innermost (which must be spatial too); there must be as
    many. Fails naming the first parameter whose shape differs, or that one side lacks.
    """
    kinds = [lv.get("kind", "spatial") for lv in levels(video_config)]
    targets = [path for path, kind in zip(_level_paths(video_config), kinds)
               if kind == "spatial"]
    before_temporal = {path for path, inner_kind in zip(_level_paths(video_config), kinds[1:])
                       if inner_kind == "temporal"}
    sources = _level_paths(image_config)
    if len(targets) != len(sources):
        raise ValueError(f"The image model has {len(sources)} level(s) and the video model "
                         f"{len(targets)} spatial one(s); they must match one to one.")
    video = flax.traverse_util.flatten_dict(video_params)
    image = flax.traverse_util.flatten_dict(image_params)
    out = dict(video)
    for source, target in zip(sources, targets):
        image_leaves = _own_leaves(image, source)
        skip = (lambda k: k[0] in ADAPTERS) if target in before_temporal else (lambda k: False)
        image_leaves = {k: v for k, v in image_leaves.items() if not skip(k)}
        video_leaves = {k: v for k, v in _own_leaves(video, target).items()
                        if not _is_temporal_layer(k) and not skip(k)}
        for key in sorted(set(image_leaves) | set(video_leaves)):
            got, want = image_leaves.get(key), video_leaves.get(key)
            if got is None or want is None or got.shape != want.shape:
                where = "/".join(target + key)
                raise ValueError(
                    f"The image model's parameter does not fit the video model at {where!r}: "
                    f"image {None if got is None else got.shape}, video "
                    f"{None if want is None else want.shape}. Give the video model's spatial "
                    "levels the image model's architecture.")
            out[target + key] = got
    return flax.traverse_util.unflatten_dict(out)


def _own_leaves(flat, prefix):
    """The leaves of the level at `prefix`, its inner levels excluded, keyed relative to it."""
    n = len(prefix)
    return {k[n:]: v for k, v in flat.items()
            if k[:n] == prefix and (len(k) == n or k[n] != "inner_unet")}
