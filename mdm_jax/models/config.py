"""Model configuration: one ConfigDict per resolution level, nested through `inner`.

A model config holds the model-wide settings (channels, text, classes, dtype) and `unet`,
the outermost level. A level with `inner` set is a NestedUNet level around that inner
UNet. Field names follow the reference's `unet_config` so its yaml files read across.
"""
import ml_collections
import numpy as np

from mdm_jax.models import layers

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = (None, "xla", "cudnn")


def level_config(**overrides):
    """Defaults of one UNet level; `overrides` replace them (unknown keys are an error)."""
    cfg = ml_collections.ConfigDict(dict(
        resolution_channels=[64, 128, 256],
        num_resnets_per_resolution=[2, 2, 2],
        attention_levels=[],              # levels (indices) with attention layers
        num_attention_layers=[0, 0, 0],   # attention layers after each ResNet of a level
        temporal_dim=1024,                # time-embedding width; equal at every level
        num_groups_norm=32,
        use_attention_ffn=False,
        dropout=0.0,
        remat=False,                      # recompute this level's activations in backward
        skip_mid_blocks=False,            # a nested level never has mid blocks
        skip_normalization=True,          # nested levels: divide the input by its std
        skip_inner_unet_input=False,      # nested levels: don't feed features inward
        micro_conditioning="",            # e.g. "scale:64,watermark_score:0"
        # Video (model.num_frames > 0). 'spatial': halve H and W on the way down, as an
        # image level; 'temporal': halve the frames instead (H and W kept).
        kind="spatial",
        num_temporal_attention_layers=[],  # per resolution, after each ResNet; [] = none
        temporal_positional_encoding=False,  # rotary frame positions in those layers
    ))
    cfg.inner = ml_collections.config_dict.placeholder(ml_collections.ConfigDict)
    _update_strict(cfg, overrides)
    return cfg


def model_config(unet, **overrides):
    """Model-wide settings around the outermost level `unet` (a `level_config`)."""
    cfg = ml_collections.ConfigDict(dict(
        input_channels=3,
        output_channels=3,
        conditioning_feature_dim=0,        # text feature width in; 0 = no text
        conditioning_feature_proj_dim=0,   # innermost Linear projection of the text; 0 = none
        num_lm_head_layers=0,              # transformer layers over the tokens
        masked_cross_attention=True,
        pooled_text_embedding=True,        # add the mean text embedding to temb
        num_classes=0,                     # class-conditional (ImageNet) when > 0
        # Labels that are combinations of attributes (shapes: shape x colour = (5, 10)): the
        # label's digits in this mixed radix, last fastest, each get an embedding table and
        # the label's embedding is their sum, so an attribute is learned from every class
        # that has it. None = one table of num_classes rows. (Not (): FrozenConfigDict
        # refuses one tuple object in two places, and () is shared with other fields.)
        class_factors=ml_collections.config_dict.placeholder(tuple),
        dtype="float32",                   # activations; params are always float32
        attention_impl=ml_collections.config_dict.placeholder(str),  # None/'xla'/'cudnn'
        # GroupNorms as one function with a backward pass that keeps only the input and
        # the statistics (models/group_norm.py); False: flax's GroupNorm and autodiff.
        # The same parameters and outputs either way.
        fused_norms=True,
        # Up blocks' nearest x2 upsampling and 3x3 conv as one 2x2 conv at the input's size
        # (models/upsample.py): under half the FLOPs, the same parameters and outputs.
        subpixel_upsample=True,
        num_frames=0,                      # frames of the top level's clips; 0 = images
    ))
    _update_strict(cfg, overrides)
    cfg.unet = unet
    return cfg


def _update_strict(cfg, overrides):
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"Unknown model config key {key!r}; valid keys: {sorted(cfg)}")
        setattr(cfg, key, value)


def parse_micro_conditioning(spec):
    """'scale:64,watermark_score:0' -> [('scale', 64.0), ('watermark_score', 0.0)]."""
    out = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, default = item.partition(":")
        if not sep:
            raise ValueError(f"micro_conditioning entry {item!r} must be 'key:default', "
                             "e.g. 'scale:64'")
        out.append((key.strip(), float(default)))
    return out


def levels(config):
    """The level configs, outermost first."""
    out, level = [], config.unet
    while level is not None:
        out.append(level)
        level = level.inner
    return out


def nest_scales(config):
    """Side ratio of each level to the lowest, highest first, e.g. [16, 4, 1].

    A nested level's down path halves the size at each of its resolutions but the
    last, so its ratio to the next level is 2 ** (len(resolution_channels) - 1); a
    temporal level (video) keeps the size: ratio 1.
    """
    ratios = [1 if _kind(lv) == "temporal" else 2 ** (len(lv.resolution_channels) - 1)
              for lv in levels(config)[:-1]]
    scales = [1]
    for r in reversed(ratios):
        scales.insert(0, scales[0] * r)
    return scales


def is_video(config):
    return config.get("num_frames", 0) > 0


def level_frames(config):
    """Frames per clip of each level, highest first (None for an image model): a temporal
    level's inner level has 2 ** (len(resolution_channels) - 1) times fewer."""
    if not is_video(config):
        return None
    frames = [config.num_frames]
    for lv in levels(config)[:-1]:
        ratio = 2 ** (len(lv.resolution_channels) - 1) if _kind(lv) == "temporal" else 1
        frames.append(frames[-1] // ratio)
    return frames


def nest_frame_ratios(config):
    """Frame count of each level over the lowest level's, highest first, e.g. [16, 16, 1]
    (None for an image model): what process.pyramid subsamples clips by."""
    frames = level_frames(config)
    return None if frames is None else [f // frames[-1] for f in frames]


def _kind(level):
    return level.get("kind", "spatial")


def level_sizes(config, image_size):
    """Image side of each level, highest first."""
    scales = nest_scales(config)
    inner_downsampling = 2 ** (len(levels(config)[-1].resolution_channels) - 1)
    if image_size % (scales[0] * inner_downsampling):
        raise ValueError(
            f"image_size {image_size} must be divisible by {scales[0] * inner_downsampling}: "
            f"the nest ratio {scales[0]} times the innermost UNet's downsampling "
            f"{inner_downsampling}.")
    return [image_size // scales[0] * s for s in scales]


def validate(config):
    """Checks a model config once, with messages that name the fix."""
    if config.dtype not in DTYPES:
        raise ValueError(f"model.dtype={config.dtype!r}; use one of {DTYPES}.")
    if config.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={config.attention_impl!r}; "
                         f"use one of {ATTENTION_IMPLS}.")
    factors = tuple(config.get("class_factors") or ())
    if factors and (min(factors) < 1 or int(np.prod(factors)) != config.num_classes):
        raise ValueError(f"model.class_factors={factors} must be positive with product "
                         f"num_classes={config.num_classes}, e.g. (5, 10) for 50 classes; "
                         "or None for one embedding table.")
    chain = levels(config)
    temporal = {lv.temporal_dim for lv in chain}
    if len(temporal) != 1:
        raise ValueError(f"All levels must share one temporal_dim (the pooled text embedding "
                         f"is added at every level); got {sorted(temporal)}.")
    for depth, lv in enumerate(chain):
        where = "model.unet" + ".inner" * depth
        n = len(lv.resolution_channels)
        for key in ("num_resnets_per_resolution", "num_attention_layers"):
            if len(lv[key]) != n:
                raise ValueError(f"{where}.{key} has {len(lv[key])} entries; it needs one per "
                                 f"resolution ({n}, as resolution_channels).")
        if lv.temporal_dim % 8:
            raise ValueError(f"{where}.temporal_dim={lv.temporal_dim} must be a multiple of 8.")
        for i in lv.attention_levels:
            if not 0 <= i < n:
                raise ValueError(f"{where}.attention_levels has {i}; valid levels are 0..{n - 1}.")
            c = lv.resolution_channels[i]
            if lv.num_attention_layers[i] and c % layers.ATTENTION_GROUPS:
                raise ValueError(f"{where}.resolution_channels[{i}]={c}: attention levels need "
                                 f"channels divisible by {layers.ATTENTION_GROUPS}.")
        for c in lv.resolution_channels:
            if c % lv.num_groups_norm:
                raise ValueError(f"{where}: channels {c} not divisible by "
                                 f"num_groups_norm={lv.num_groups_norm}.")
        parse_micro_conditioning(lv.micro_conditioning)
        _validate_video_level(config, lv, where, is_last=depth == len(chain) - 1)
    frames = config.get("num_frames", 0)
    for depth, lv in enumerate(chain[:-1]):
        ratio = 2 ** (len(lv.resolution_channels) - 1)
        if is_video(config) and _kind(lv) == "temporal":
            if frames % ratio:
                raise ValueError(
                    f"model.unet{'.inner' * depth} (temporal) divides the frames by {ratio}, "
                    f"and {frames} frames reach it: make model.num_frames a multiple of "
                    f"{config.num_frames // frames * ratio}.")
            frames //= ratio
    if config.num_lm_head_layers and config.conditioning_feature_dim <= 0:
        raise ValueError("num_lm_head_layers > 0 needs text: set conditioning_feature_dim.")
    return config


def _validate_video_level(config, lv, where, is_last):
    if _kind(lv) not in ("spatial", "temporal"):
        raise ValueError(f"{where}.kind={_kind(lv)!r}; use 'spatial' or 'temporal'.")
    temporal_layers = list(lv.get("num_temporal_attention_layers") or [])
    if not is_video(config) and (_kind(lv) == "temporal" or any(temporal_layers)):
        raise ValueError(f"{where} has temporal layers but model.num_frames=0 (an image "
                         "model): set model.num_frames to the clips' frame count.")
    if _kind(lv) == "temporal" and is_last:
        raise ValueError(f"{where}.kind='temporal' on the innermost UNet: a temporal level "
                         "needs an inner level to hand its fewer frames to.")
    n = len(lv.resolution_channels)
    if temporal_layers and len(temporal_layers) != n:
        raise ValueError(f"{where}.num_temporal_attention_layers has {len(temporal_layers)} "
                         f"entries; it needs one per resolution ({n}), or [] for none.")
    for i, count in enumerate(temporal_layers):
        if count and lv.resolution_channels[i] % layers.ATTENTION_HEADS:
            raise ValueError(f"{where}.resolution_channels[{i}]={lv.resolution_channels[i]}: "
                             f"temporal attention needs channels divisible by "
                             f"{layers.ATTENTION_HEADS} (its heads).")
