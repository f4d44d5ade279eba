"""Text-to-image 64² on CC12M: the reference's cc12m_64x64 model (461.4M parameters)."""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    cfg = defaults.cc12m_config(presets.cc12m_64(), image_size=64)
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=500_000, global_batch_size=2048,
                                      learning_rate=5e-5, warmup_steps=10_000)
    return cfg
