"""A small text-to-video MDM on the generated moving shapes clips ("a red circle moving
left"): 8x32² (spatial) ⊃ 8x16² (temporal, 8 -> 1 frame) ⊃ 1x16² (the image UNet), the
paper's video shape scaled down, with a small text encoder trained alongside.

Stages grow it as the paper does: res16 trains the 16² image UNet on the clips' first
frames, video16 grows it into the temporal level's 8x16² clips, video32 adds the 32²
spatial level. Minutes on one GPU. Presets: `configs/demo_video.py` and
`configs/demo_video.py:smoke` (a few steps of a tinier model, for tests).
"""
from mdm_jax.data.config import get_data_config
from mdm_jax.models import config as model_config
from mdm_jax.runs import defaults

TEXT_WIDTH = 128


def video_model(inner_channels, temporal_channels, spatial_channels, temporal_dim, frames=8):
    """spatial ⊃ temporal ⊃ image UNet; temporal attention (rotary positions) after each
    ResNet of the temporal level while it has frames, and at the spatial level's lowest
    resolution."""
    common = dict(temporal_dim=temporal_dim, num_groups_norm=8, micro_conditioning="")
    inner = model_config.level_config(
        resolution_channels=inner_channels, num_resnets_per_resolution=[1, 1],
        attention_levels=[1], num_attention_layers=[0, 1], **common)
    n = len(temporal_channels)  # frames / 2 ** (n - 1) = 1 for the image UNet
    temporal = model_config.level_config(
        resolution_channels=temporal_channels, num_resnets_per_resolution=[1] * n,
        num_attention_layers=[0] * n, kind="temporal", skip_mid_blocks=True,
        skip_normalization=False, num_temporal_attention_layers=[1] * (n - 1) + [0],
        temporal_positional_encoding=True, **common)
    temporal.inner = inner
    spatial = model_config.level_config(
        resolution_channels=spatial_channels, num_resnets_per_resolution=[1, 1],
        num_attention_layers=[0, 0], skip_mid_blocks=True, skip_normalization=False,
        num_temporal_attention_layers=[0, 1], temporal_positional_encoding=True, **common)
    spatial.inner = temporal
    return model_config.model_config(spatial, num_frames=frames,
                                     conditioning_feature_dim=TEXT_WIDTH)


def get_config(arg=None):
    cfg = defaults.base_config()
    cfg.model = video_model([64, 128], [64, 64, 128, 128], [32, 64], temporal_dim=256)
    cfg.text.kind = "small"
    cfg.text.max_length = 16  # the captions are a few words
    cfg.text.small.width, cfg.text.small.depth, cfg.text.small.num_heads = TEXT_WIDTH, 2, 4

    cfg.data = get_data_config()
    cfg.data.dataset = "moving_shapes"
    cfg.data.data_dir = "./workdir/data"
    cfg.data.image_size = 32
    cfg.data.moving_shapes.image_size = 32
    cfg.data.moving_shapes.num_frames = 8
    cfg.data.moving_shapes.num_examples = 10_000
    cfg.data.caption_dropout = 0.1

    cfg.diffusion.schedule_type = "cosine"
    cfg.stages.res16 = defaults.stage(num_levels=1, steps=2000, global_batch_size=64,
                                      learning_rate=1e-3, warmup_steps=100)
    cfg.stages.video16 = defaults.stage(num_levels=2, steps=2000, global_batch_size=16,
                                        learning_rate=5e-4, warmup_steps=100)
    cfg.stages.video32 = defaults.stage(num_levels=3, steps=2000, global_batch_size=8,
                                        learning_rate=5e-4, warmup_steps=100,
                                        multi_res_weights=(4.0, 1.0, 1.0))
    cfg.ema_decay = 0.999
    cfg.log_every = 50
    cfg.checkpoint_every = 500
    cfg.sample_every = 0
    cfg.sample.num_samples = 4
    cfg.sample.num_steps = 50
    cfg.sample.guidance = 3.0
    cfg.sample.prompts = ("a red circle moving left", "a blue square moving up")

    if arg == "smoke":
        cfg.model = video_model([16, 32], [16, 16, 32, 32], [8, 16], temporal_dim=32)
        cfg.text.small.depth = 1
        cfg.data.moving_shapes.num_examples = 64
        for stage in cfg.stages.values():
            stage.steps, stage.global_batch_size = 2, 8
        cfg.log_every = 1
        cfg.checkpoint_every = 2
        cfg.sample.num_samples = 2
        cfg.sample.num_steps = 2
    elif arg:
        raise ValueError(f"Unknown demo_video preset {arg!r}; use configs/demo_video.py or "
                         ":smoke.")
    return cfg
