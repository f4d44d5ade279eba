"""Architectures of the reference's released models (apple/ml-mdm configs/models/*.yaml),
and our reconstruction of the paper's video model around them.

The 64² UNet is the inner model of the 256² one, which is the inner model of the 1024²
one: progressive training grows each into the next. With Flan-T5-XL text (2048 wide)
they have 461.4M, 476.6M and 481.0M parameters, as the released checkpoints.
"""
from mdm_jax.models import config as model_config

T5_XL_WIDTH = 2048


def unet_64(micro_conditioning="scale:64"):
    """The 64² UNet: all attention (and text cross-attention) lives here."""
    return model_config.level_config(
        resolution_channels=[256, 512, 768], num_resnets_per_resolution=[2, 2, 2],
        attention_levels=[1, 2], num_attention_layers=[0, 1, 5], temporal_dim=1024,
        num_groups_norm=32, use_attention_ffn=True, micro_conditioning=micro_conditioning)


def level_256(inner, skip_normalization=True):
    """The light 256² level around the 64² UNet (no attention, no mid blocks)."""
    level = model_config.level_config(
        resolution_channels=[64, 128, 256], num_resnets_per_resolution=[2, 2, 1],
        num_attention_layers=[0, 0, 0], temporal_dim=1024, num_groups_norm=32,
        skip_mid_blocks=True, skip_normalization=skip_normalization,
        micro_conditioning="scale:256")
    level.inner = inner
    return level


def level_1024(inner):
    level = model_config.level_config(
        resolution_channels=[32, 32, 64], num_resnets_per_resolution=[2, 2, 1],
        num_attention_layers=[0, 0, 0], temporal_dim=1024, num_groups_norm=32,
        skip_mid_blocks=True, micro_conditioning="scale:1024")
    level.inner = inner
    return level


def _text_model(unet, **overrides):
    return model_config.model_config(
        unet, conditioning_feature_dim=T5_XL_WIDTH, conditioning_feature_proj_dim=T5_XL_WIDTH,
        masked_cross_attention=False, **overrides)


def cc12m_64(**overrides):
    return _text_model(unet_64(), **overrides)


def cc12m_256(**overrides):
    return _text_model(level_256(unet_64()), **overrides)


def cc12m_1024(**overrides):
    # In the 1024² model the 256² level normalises its input (the reference's yaml).
    return _text_model(level_1024(level_256(unet_64(), skip_normalization=False)), **overrides)


def class_conditional(unet, num_classes=1000, **overrides):
    """ImageNet: the same architecture, a class embedding instead of text."""
    return model_config.model_config(unet, num_classes=num_classes, **overrides)


def temporal_level_64(inner, num_frames=16):
    """The 16x64² temporal level of the paper's video model (its config was never
    released; this is our reconstruction): five resolutions at 64², each halving the
    frames (16 -> 1) so that its inner level is the 64² image UNet on the first frame,
    temporal attention with rotary positions after every ResNet while there are frames
    to attend over."""
    halvings = int(num_frames).bit_length() - 1
    n = halvings + 1
    level = model_config.level_config(
        resolution_channels=[128, 128] + [256] * (n - 2),
        num_resnets_per_resolution=[1] * n, num_attention_layers=[0] * n, temporal_dim=1024,
        num_groups_norm=32, skip_mid_blocks=True, skip_normalization=False, kind="temporal",
        num_temporal_attention_layers=[1] * halvings + [0],
        temporal_positional_encoding=True, micro_conditioning="scale:64")
    level.inner = inner
    return level


def webvid_16x256(num_frames=16, **overrides):
    """Text-to-video 16x256² ⊃ 16x64² ⊃ 1x64² (the paper's shape): the 256² level of
    cc12m_256 run on every frame, with temporal attention at its 64² resolution, around
    the temporal level, around the released 64² UNet."""
    spatial = level_256(temporal_level_64(unet_64(), num_frames), skip_normalization=False)
    spatial.num_temporal_attention_layers = [0, 0, 1]
    spatial.temporal_positional_encoding = True
    return _text_model(spatial, num_frames=num_frames, **overrides)
