"""Samples a trained or converted model: python -m mdm_jax.sample --checkpoint=RUN.

    python -m mdm_jax.sample --checkpoint=workdir/demo --labels=0,1,2,3 \
        --sampler=dpm++ --num_steps=25 --output=workdir/demo/generated

RUN is a training run's workdir or a `python -m mdm_jax.convert` output. Uses the EMA
params of the stage's latest checkpoint (default: the last stage that has one) and the
config saved with it; --config=CONFIG.py (or configs/from_checkpoint.py:RUN) with
--config.* overrides replaces it, e.g. to sample in bf16 with cuDNN attention. Writes
OUTPUT/NNNNN.png (the highest level) and OUTPUT/grid.png (every level, a row per sample).
The batch is split over every device; with --distributed (or the coordinator flags) over
every process's, as in training. The sampling flags left unset take the config's
sample.<same name>.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.diffusion.config import THRESHOLDS
from mdm_jax.parallel import distributed
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.sampling import generate
from mdm_jax.training import metrics

config_flags.DEFINE_config_file("config", None, "Experiment config file (default: the "
                                "config saved with the checkpoint).", lock_config=True)
flags.DEFINE_string("checkpoint", None, "A training run's workdir or a converted model "
                    "(a folder holding checkpoints/<stage>/<step>).")
flags.DEFINE_string("stage", None, "Stage to sample (default: the last with checkpoints).")
flags.DEFINE_string("prompt", None, "One text prompt.")
flags.DEFINE_string("prompts", None, "A file of text prompts, one a line.")
flags.DEFINE_list("labels", None, "Class labels, e.g. 0,1,2.")
flags.DEFINE_integer("num_samples", None, "Samples to draw (default: one per prompt or "
                     "label, which are cycled when more are asked for).")
flags.DEFINE_integer("num_steps", None, "Sampler steps (default: sample.num_steps).")
flags.DEFINE_enum("sampler", None, generate.SAMPLERS, "The sampler (default: sample.sampler).")
flags.DEFINE_float("eta", None, "DDIM's eta, 0: deterministic (default: sample.eta).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale, 1: none (default: "
                   "sample.guidance).")
flags.DEFINE_string("negative_prompt", "", "The unconditional text of guidance.")
flags.DEFINE_enum("threshold", None, THRESHOLDS, "x0 thresholding (default: the config's).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("batch_size", 8, "Samples per batch (a multiple of the devices).")
flags.DEFINE_string("output", None, "Where the PNGs go.")
flags.mark_flags_as_required(["checkpoint", "output"])
FLAGS = flags.FLAGS


def read_prompts():
    if FLAGS.prompt is not None and FLAGS.prompts is not None:
        raise ValueError("Pass --prompt or --prompts, not both.")
    if FLAGS.prompts is not None:
        with open(FLAGS.prompts) as f:
            return tuple(line.strip() for line in f if line.strip())
    return () if FLAGS.prompt is None else (FLAGS.prompt,)


def main(argv):
    del argv
    metrics.quiet_library_logs()  # Orbax's INFO lines: one a checkpoint read
    distributed.initialize_from_flags()
    options = generate.Options(
        stage=FLAGS.stage, prompts=read_prompts(),
        labels=tuple(int(x) for x in FLAGS.labels or ()), num_samples=FLAGS.num_samples,
        num_steps=FLAGS.num_steps, sampler=FLAGS.sampler, eta=FLAGS.eta,
        guidance=FLAGS.guidance, negative_prompt=FLAGS.negative_prompt,
        threshold=FLAGS.threshold, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
    config = FLAGS.config or checkpoints_lib.saved_run_config(FLAGS.checkpoint, FLAGS.stage)
    paths = generate.generate(config, FLAGS.checkpoint, FLAGS.output, options)
    logging.info("Wrote %d samples to %s", len(paths), FLAGS.output)


if __name__ == "__main__":
    app.run(main)
