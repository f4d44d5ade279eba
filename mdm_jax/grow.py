"""Grows a lower-stage checkpoint into the next stage's model, as a new run's start.

    python -m mdm_jax.grow --config=configs/cc12m_256.py --stage=res256 \
        --from_checkpoint=runs/cc12m_64/checkpoints/res64 --workdir=runs/cc12m_256

writes step 0 of stage `res256` in the workdir: the old params and EMA in the inner UNet,
fresh outer layers with zero adapters and output conv. `python -m mdm_jax.train` with the
same config and workdir then trains from it (earlier stages are skipped only if their
checkpoints are there, so give the config just the stages still to run, or reuse the
old workdir). A checkpoint of the wrong stage or architecture fails naming the mismatch.

A video stage can start from an image model instead (docs/video.md): its levels fill the
video model's spatial levels and innermost UNet, the temporal layers start fresh:

    python -m mdm_jax.grow --config=configs/webvid_16x256.py --stage=video256 \
        --from_image_run=runs/cc12m_256 --workdir=runs/webvid
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.parallel import distributed
from mdm_jax.runs import growth
from mdm_jax.training import metrics

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("stage", None, "The stage to grow into (a key of config.stages).")
flags.DEFINE_string("from_checkpoint", None, "Stage directory of the lower-stage run.")
flags.DEFINE_string("from_image_run", None, "Or, for a video stage: an image run's workdir "
                    "(or converted model) whose latest stage gives the 2D layers.")
flags.DEFINE_string("workdir", None, "The new run's workdir.")
flags.mark_flags_as_required(["config", "stage", "workdir"])
flags.register_multi_flags_validator(
    ["from_checkpoint", "from_image_run"],
    lambda given: (given["from_checkpoint"] is None) != (given["from_image_run"] is None),
    "Pass exactly one of --from_checkpoint and --from_image_run.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    metrics.quiet_library_logs()  # Orbax's INFO lines: one a checkpoint read
    distributed.initialize_from_flags()
    directory = growth.write_grown_checkpoint(FLAGS.config, FLAGS.stage,
                                              FLAGS.from_checkpoint, FLAGS.workdir,
                                              FLAGS.from_image_run)
    logging.info("Grown checkpoint written to %s", directory)


if __name__ == "__main__":
    app.run(main)
