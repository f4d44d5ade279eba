"""Evaluates a model or a folder of images: python -m mdm_jax.evaluate

    # Samples 100 images of the demo (2 per class) and judges them:
    python -m mdm_jax.evaluate --checkpoint=workdir/demo --num_samples=100 \
        --output=workdir/demo/eval
    # FID against statistics of a data set (made once, with the same networks):
    python -m mdm_jax.evaluate --write_reference=refs/imagenet64 \
        --config=configs/imagenet_64.py --inception_weights=inception_fid.npz
    python -m mdm_jax.evaluate --checkpoint=RUN --reference=refs/imagenet64 \
        --inception_weights=inception_fid.npz --num_samples=10000 --output=eval
    # CLIP score of a text model's samples for a prompt file:
    python -m mdm_jax.evaluate --checkpoint=RUN --prompts=prompts.txt \
        --clip=~/models/clip-vit-base-patch16 --output=eval

Samples with the sampling library of `python -m mdm_jax.sample` (same flags, batches split
over every device; the multi-process flags of mdm_jax.parallel.distributed), or reads
--images=FOLDER (mdm_jax.evaluation.report). Writes OUTPUT/report.json (the numbers and
the settings) and OUTPUT/grid.png (the first samples, every level side by side), and
prints the report. The shapes judge is used by default for models trained on shapes.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.diffusion.config import THRESHOLDS
from mdm_jax.evaluation import inception, report
from mdm_jax.parallel import distributed
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.sampling import generate
from mdm_jax.training import metrics

config_flags.DEFINE_config_file("config", None, "Experiment config (default: the one saved "
                                "with --checkpoint).", lock_config=True)
flags.DEFINE_string("checkpoint", None, "A training run's workdir or a converted model.")
flags.DEFINE_string("images", None, "A folder of images to evaluate instead of sampling.")
flags.DEFINE_string("stage", None, "Stage to sample (default: the last with checkpoints).")
flags.DEFINE_integer("num_samples", 500, "Samples to draw (or at most this many --images).")
flags.DEFINE_list("labels", None, "Class labels, cycled over the samples (default for a "
                  "class-conditional model: every class in turn).")
flags.DEFINE_string("prompts", None, "A file of prompts, one a line, cycled over the samples.")
flags.DEFINE_integer("num_steps", 25, "Sampler steps.")
flags.DEFINE_enum("sampler", "dpm++", generate.SAMPLERS, "The sampler.")
flags.DEFINE_float("eta", 0.0, "DDIM's eta.")
flags.DEFINE_float("guidance", None, "Guidance scale (default: config.sample.guidance).")
flags.DEFINE_string("negative_prompt", "", "The unconditional text of guidance.")
flags.DEFINE_enum("threshold", None, THRESHOLDS, "x0 thresholding (default: the config's).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 50, "Samples per batch (a multiple of the devices).")
flags.DEFINE_string("judge", "auto", "The shapes judge: auto (the packaged one for models "
                    "trained on shapes), packaged, none, or a checkpoint path.")
flags.DEFINE_string("inception_weights", "", "The FID InceptionV3 weights "
                    "(pt_inception-2015-12-05-6726825d.pth, or its .npz/.safetensors from "
                    "python -m mdm_jax.convert_inception).")
flags.DEFINE_enum("inception_mode", "pytorch_fid", inception.MODES, "Whose resizing and "
                  "scaling: pytorch-fid's or torch-fidelity's (torchmetrics', the reference's).")
flags.DEFINE_string("clip", "", "A Hugging Face CLIP directory (openai/clip-vit-*).")
flags.DEFINE_string("reference", None, "Reference statistics: a folder written by "
                    "--write_reference or a pytorch-fid .npz (Inception).")
flags.DEFINE_string("write_reference", None, "Write reference statistics of the config's "
                    "data set (data.split) to this folder, then stop.")
flags.DEFINE_integer("num_reference", 10_000, "Real images the reference statistics use.")
flags.DEFINE_integer("grid_size", 16, "Samples shown in grid.png.")
flags.DEFINE_string("output", None, "Where report.json and grid.png go.")
FLAGS = flags.FLAGS


def run_config():
    if FLAGS.config is not None:
        return FLAGS.config
    if FLAGS.checkpoint is None:
        raise ValueError("Pass --checkpoint=RUN (or --config=CONFIG for --write_reference).")
    return checkpoints_lib.saved_run_config(FLAGS.checkpoint, FLAGS.stage)


def read_conditions():
    prompts = ()
    if FLAGS.prompts:
        with open(os.path.expanduser(FLAGS.prompts)) as f:
            prompts = tuple(line.strip() for line in f if line.strip())
    labels = tuple(int(x) for x in FLAGS.labels or ())
    if prompts and labels:
        raise ValueError("Pass --prompts or --labels, not both.")
    return prompts, labels


def run():
    networks = report.Networks(FLAGS.judge, FLAGS.inception_weights, FLAGS.inception_mode,
                               FLAGS.clip)
    if FLAGS.write_reference:
        return [report.write_reference(run_config(), networks, FLAGS.write_reference,
                                       FLAGS.num_reference)]
    if not FLAGS.output:
        raise ValueError("Pass --output=DIR for the report.")
    if bool(FLAGS.checkpoint) == bool(FLAGS.images):
        raise ValueError("Pass one of --checkpoint=RUN (to sample) or --images=FOLDER.")
    prompts, labels = read_conditions()
    common = dict(networks=networks, output=FLAGS.output, reference=FLAGS.reference,
                  grid_size=FLAGS.grid_size)
    if FLAGS.images:
        result = report.evaluate_folder(FLAGS.config, FLAGS.images, FLAGS.num_samples,
                                        list(prompts or labels), **common)
    else:
        options = generate.Options(
            stage=FLAGS.stage, prompts=prompts, labels=labels,
            num_samples=FLAGS.num_samples, num_steps=FLAGS.num_steps, sampler=FLAGS.sampler,
            eta=FLAGS.eta, guidance=FLAGS.guidance, negative_prompt=FLAGS.negative_prompt,
            threshold=FLAGS.threshold, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
        result = report.evaluate_checkpoint(run_config(), FLAGS.checkpoint, options, **common)
    return report.summary(result, FLAGS.output)


def main(argv):
    del argv
    metrics.quiet_library_logs()  # Orbax's INFO lines: one a checkpoint read
    distributed.initialize_from_flags()
    try:
        lines = run()
    except (ValueError, FileNotFoundError, ImportError) as error:
        logging.debug("evaluate failed", exc_info=True)
        sys.exit(f"evaluate: {error}")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
