"""Text-to-video on WebVid-10M: 16x256² ⊃ 16x64² ⊃ 1x64², the paper's shape
(mdm_jax.models.presets.webvid_16x256: the cc12m 256² level on every frame, our temporal
level, the 64² image UNet), frozen Flan-T5-XL text.

Stages: res64 is the 64² image UNet on the clips' first frames (or start from a trained
cc12m_64 run: python -m mdm_jax.grow); video64 grows it into the temporal level's 16x64²
clips; video256 adds the 256² spatial level. Build the clips first:
  python -m mdm_jax.build_data --data.dataset=video --data.manual_dir=/data/webvid \
      --data.video.csv=results_10M_train.csv --data.video.image_size=256
"""
from mdm_jax.models import presets
from mdm_jax.runs import defaults


def get_config(arg=None):
    cfg = defaults.cc12m_config(presets.webvid_16x256(), image_size=256)
    cfg.data.dataset = "video"
    cfg.data.video.name = "webvid"
    cfg.data.video.image_size = 256
    cfg.data.video.num_frames = 16
    cfg.data.video.frame_stride = 4
    cfg.sample.prompts = ("a red sports car driving along a coastal road",
                          "waves breaking on a rocky beach at sunset")
    cfg.stages.res64 = defaults.stage(num_levels=1, steps=300_000, global_batch_size=2048,
                                      learning_rate=5e-5, warmup_steps=10_000)
    cfg.stages.video64 = defaults.stage(num_levels=2, steps=100_000, global_batch_size=256,
                                        learning_rate=5e-5, warmup_steps=5_000)
    cfg.stages.video256 = defaults.stage(num_levels=3, steps=100_000, global_batch_size=64,
                                         learning_rate=5e-5, warmup_steps=5_000,
                                         mixed_ratio=(2.0, 1.0, 1.0))
    return cfg
