"""Text-to-image 1024² on CC12M: the reference's cc12m_1024x1024 model (481.0M).

Three stages, 64² -> 256² -> 1024², each grown from the previous; level losses weighted
16:4:1 and schedules shifted with power 2 (the reference's settings).
"""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    cfg = defaults.cc12m_config(presets.cc12m_1024(), image_size=1024)
    cfg.diffusion.schedule_shifted_power = 2.0
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=500_000, global_batch_size=2048,
                                      learning_rate=5e-5, warmup_steps=10_000)
    cfg.stages.res256 = defaults.stage(num_levels=2, steps=300_000, global_batch_size=1024,
                                       learning_rate=5e-5, warmup_steps=10_000,
                                       mixed_ratio=(2.0, 1.0))
    cfg.stages.res1024 = defaults.stage(num_levels=3, steps=100_000, global_batch_size=256,
                                        learning_rate=5e-5, warmup_steps=10_000,
                                        multi_res_weights=(16.0, 4.0, 1.0))
    return cfg
