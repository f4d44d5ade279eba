"""Class-conditional ImageNet 64²: the 64² UNet of the cc12m models with a class embedding."""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    cfg = defaults.imagenet_config(presets.class_conditional(presets.unet_64()), image_size=64)
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=500_000, global_batch_size=1024,
                                      learning_rate=1e-4, warmup_steps=10_000)
    return cfg
