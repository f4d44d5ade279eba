"""Progressive growth: a trained lower-resolution model becomes the inner UNet of the next.

The new outer level starts fresh; its adapters and output conv are zero-initialised, so
right after growing, the lower-level outputs equal the old model's exactly. Every old
parameter and EMA value is copied unchanged into the `inner_unet` subtree.
"""
import flax
import flax.linen as nn
import jax

from mdm_jax.models import config as model_config_lib


def stage_model_config(model_config, num_levels):
    """The model of a stage: the innermost `num_levels` levels of the full model."""
    chain = model_config_lib.levels(model_config)
    if not 1 <= num_levels <= len(chain):
        raise ValueError(f"A stage has num_levels={num_levels}; the model has {len(chain)} "
                         "levels, so use 1 to that.")
    stage = model_config.copy_and_resolve_references()
    level = stage.unet
    for _ in range(len(chain) - num_levels):
        level = level.inner
    stage.unet = level
    return stage


def _shapes(tree):
    flat = flax.traverse_util.flatten_dict(nn.unbox(tree), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_inner_matches(old_unet, new_unet_boxed):
    """Fails, naming the first mismatch, unless old_unet fits new_unet['inner_unet']."""
    if "inner_unet" not in new_unet_boxed:
        raise ValueError("The new stage's model has no inner UNet to grow into: its stage "
                         "must have one more level than the checkpoint's.")
    want, got = _shapes(new_unet_boxed["inner_unet"]), _shapes(old_unet)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ValueError(
                f"The lower-stage checkpoint does not fit the new model's inner UNet at "
                f"{key!r}: checkpoint {got.get(key)}, model {want.get(key)}. Is the config's "
                "inner level the architecture that stage was trained with?")


def insert_inner(new_unet_boxed, old_unet):
    """new_unet with its inner_unet subtree replaced by old_unet (keeping the axis names)."""
    inner = jax.tree_util.tree_map(
        lambda box, value: box.replace_boxed(value) if isinstance(box, nn.LogicallyPartitioned)
        else value,
        new_unet_boxed["inner_unet"], old_unet,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {**new_unet_boxed, "inner_unet": inner}
