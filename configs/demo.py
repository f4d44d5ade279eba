"""The embedded default: a small two-level MDM (64² around 32²) on the shapes data set.

Class-conditional on the shape's shape and colour (50 classes), in the easiest variant of
the data: one large upright shape in the centre of a plain background. Trains the 32²
UNet, grows it into the nested 64² model, trains that: about ten minutes on a 2-core CPU.
The recipe was chosen with launch/tune_demo.py (README: the judged score of this run and of
the longer GPU recipe, which trains on shapes anywhere and rotated).
Presets: `configs/demo.py` (default) and `configs/demo.py:smoke` (a few steps, for tests).
"""
from mdm_jax.data import shapes_render
from mdm_jax.data.config import get_data_config
from mdm_jax.models import config as model_config
from mdm_jax.runs import defaults


def labelled_model(inner_channels, outer_channels, temporal_dim):
    """The two-level model: a 32² UNet with one ResNet per resolution and attention at its
    lowest, inside a 64² level without mid blocks. Conditioned on the label as shape x
    colour: one embedding per attribute, so that each shape is learned from all ten
    colours' examples (docs/experiments.md: the demo's recipe)."""
    n = len(inner_channels)
    outer = model_config.level_config(
        resolution_channels=outer_channels, num_resnets_per_resolution=[1, 1],
        num_attention_layers=[0, 0], temporal_dim=temporal_dim, num_groups_norm=8,
        skip_mid_blocks=True, micro_conditioning="")
    outer.inner = model_config.level_config(
        resolution_channels=inner_channels, num_resnets_per_resolution=[1] * n,
        attention_levels=[n - 1], num_attention_layers=[0] * (n - 1) + [1],
        temporal_dim=temporal_dim, num_groups_norm=8, micro_conditioning="")
    return model_config.model_config(
        outer, num_classes=len(shapes_render.CLASS_NAMES),
        class_factors=(len(shapes_render.SHAPES), len(shapes_render.COLOURS)))


def get_config(arg=None):
    cfg = defaults.base_config()
    cfg.model = labelled_model([32, 64, 64], [16, 32], temporal_dim=128)

    cfg.data = get_data_config()
    cfg.data.dataset = "shapes"
    cfg.data.data_dir = "./workdir/data"
    cfg.data.image_size = 64
    cfg.data.shapes.image_size = 64
    cfg.data.shapes.num_examples = 10_000
    # One large upright shape in the centre of a plain background: all the scene varies
    # is what the label names (and the background's tone), readable at 32².
    cfg.data.shapes.max_objects = 1
    cfg.data.shapes.min_size = "large"
    cfg.data.shapes.plain_background = True
    cfg.data.shapes.centred = True
    cfg.data.shapes.upright = True

    cfg.diffusion.schedule_type = "cosine"
    # About 5 CPU minutes each: the cheap 32² stage, where shape and colour are decided,
    # then the 64² stage (2.4 times the cost an image) in smaller batches.
    cfg.stages.res32 = defaults.stage(num_levels=1, steps=1400, global_batch_size=16,
                                      learning_rate=2e-3, warmup_steps=50)
    cfg.stages.res64 = defaults.stage(num_levels=2, steps=1100, global_batch_size=8,
                                      learning_rate=5e-4, warmup_steps=50,
                                      multi_res_weights=(4.0, 1.0))
    cfg.ema_decay = 0.999
    cfg.log_every = 25
    cfg.checkpoint_every = 200
    cfg.sample_every = 0
    cfg.sample.num_samples = 0  # launch/demo.sh's evaluation writes the samples' grid
    cfg.sample.num_steps = 50
    cfg.sample.guidance = 4.0

    if arg == "smoke":
        # A smaller model of the same shape (two levels, attention in the inner one, both
        # label factors): the tests' many runs mostly pay XLA's compile time, which grows
        # with the model's layers and widths.
        cfg.model = labelled_model([16, 32], [8, 16], temporal_dim=32)
        cfg.data.shapes.num_examples = 256
        cfg.stages.res32.steps = 4
        cfg.stages.res64.steps = 4
        cfg.stages.res32.global_batch_size = 8
        cfg.stages.res64.global_batch_size = 8
        cfg.log_every = 2
        cfg.checkpoint_every = 2
        cfg.sample.num_samples = 2
        cfg.sample.num_steps = 2
    elif arg:
        raise ValueError(f"Unknown demo preset {arg!r}; use configs/demo.py or :smoke.")
    return cfg
