"""Class-conditional ImageNet 256²: a 256² level around the 64² UNet, grown from imagenet_64."""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    model = presets.class_conditional(presets.level_256(presets.unet_64()))
    cfg = defaults.imagenet_config(model, image_size=256)
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=500_000, global_batch_size=1024,
                                      learning_rate=1e-4, warmup_steps=10_000)
    cfg.stages.res256 = defaults.stage(num_levels=2, steps=300_000, global_batch_size=512,
                                       learning_rate=1e-4, warmup_steps=10_000,
                                       mixed_ratio=(2.0, 1.0))
    return cfg
