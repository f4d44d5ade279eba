"""Text-to-image 256² on CC12M: the reference's cc12m_256x256 nested model (476.6M).

Stage res64 trains the inner UNet (as cc12m_64); stage res256 grows it and trains both
levels on mixed-ratio batches (the outer level on the first 2/3 of each device's rows).
"""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    cfg = defaults.cc12m_config(presets.cc12m_256(), image_size=256)
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=500_000, global_batch_size=2048,
                                      learning_rate=5e-5, warmup_steps=10_000)
    cfg.stages.res256 = defaults.stage(num_levels=2, steps=300_000, global_batch_size=1024,
                                       learning_rate=5e-5, warmup_steps=10_000,
                                       mixed_ratio=(2.0, 1.0))
    return cfg
