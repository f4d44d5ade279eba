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
over every device), or reads --images=FOLDER. Writes OUTPUT/report.json (the numbers and
the settings) and OUTPUT/grid.png (the first samples, every level side by side), and
prints the report. The shapes judge is used by default for models trained on shapes.
"""
import json
import os
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.diffusion.config import THRESHOLDS
from mdm_jax.evaluation import images as images_lib
from mdm_jax.evaluation import inception, metrics
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.sampling import generate
from mdm_jax.sampling import images as sample_images

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


def make_evaluators(config):
    return metrics.Evaluators.create(metrics.judge_path(FLAGS.judge, config),
                                     FLAGS.inception_weights,
                                     FLAGS.inception_mode, FLAGS.clip)


def write_reference():
    config = run_config()
    evaluators = make_evaluators(config)
    data = config.data
    batches = images_lib.dataset_batches(data, FLAGS.num_reference)
    statistics = metrics.reference_statistics(evaluators, batches)
    metrics.save_reference(FLAGS.write_reference, statistics, dataset=data.dataset,
                           split=data.split, image_size=data.image_size,
                           num_images=FLAGS.num_reference,
                           inception_mode=FLAGS.inception_mode)
    print(f"Wrote reference statistics ({', '.join(sorted(statistics))}) of "
          f"{FLAGS.num_reference} {data.dataset}/{data.split} images to "
          f"{FLAGS.write_reference}")


def read_conditions():
    prompts = ()
    if FLAGS.prompts:
        with open(os.path.expanduser(FLAGS.prompts)) as f:
            prompts = tuple(line.strip() for line in f if line.strip())
    labels = tuple(int(x) for x in FLAGS.labels or ())
    if prompts and labels:
        raise ValueError("Pass --prompts or --labels, not both.")
    return prompts, labels


def sampled_images(config, prompts, labels):
    """(levels, conditions) sampled from --checkpoint; a class-conditional model without
    --labels samples every class in turn."""
    num_classes = config.model.get("num_classes", 0)
    if not labels and not prompts and num_classes and config.text.kind == "none":
        labels = tuple(range(num_classes))
    options = generate.Options(
        stage=FLAGS.stage, prompts=prompts, labels=labels, num_samples=FLAGS.num_samples,
        num_steps=FLAGS.num_steps, sampler=FLAGS.sampler, eta=FLAGS.eta,
        guidance=FLAGS.guidance, negative_prompt=FLAGS.negative_prompt,
        threshold=FLAGS.threshold, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
    return generate.sample_checkpoint(config, FLAGS.checkpoint, options)


def evaluate():
    if not FLAGS.output:
        raise ValueError("Pass --output=DIR for the report.")
    if bool(FLAGS.checkpoint) == bool(FLAGS.images):
        raise ValueError("Pass one of --checkpoint=RUN (to sample) or --images=FOLDER.")
    prompts, labels = read_conditions()
    reference = metrics.load_reference(FLAGS.reference) if FLAGS.reference else None
    settings = {"num_samples": FLAGS.num_samples, "reference": FLAGS.reference}
    if FLAGS.images:
        config = FLAGS.config
        images = images_lib.read_folder(FLAGS.images, FLAGS.num_samples)
        conditions = list(prompts or labels)
        conditions = [conditions[i % len(conditions)] for i in range(len(images))
                      ] if conditions else []
        levels = [images.astype(np.float32) / 127.5 - 1]
        settings.update(images=os.path.abspath(FLAGS.images))
    else:
        config = run_config()
        levels, conditions = sampled_images(config, prompts, labels)
        images = levels[0]
        settings.update(checkpoint=os.path.abspath(FLAGS.checkpoint), stage=FLAGS.stage,
                        sampler=FLAGS.sampler, num_steps=FLAGS.num_steps,
                        guidance=(config.sample.guidance if FLAGS.guidance is None
                                  else FLAGS.guidance), seed=FLAGS.seed)
    report = metrics.evaluate(make_evaluators(config), images, conditions, reference)
    report["settings"] = settings
    os.makedirs(FLAGS.output, exist_ok=True)
    sample_images.write_grid(os.path.join(FLAGS.output, "grid.png"),
                       [level[:FLAGS.grid_size] for level in levels])
    with open(os.path.join(FLAGS.output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}))
    if "judge_accuracy" in report:
        print(f"Judged: {100 * report['judge_accuracy']:.1f}% of {report['num_images']} "
              f"samples show what they were asked for; grid: "
              f"{os.path.abspath(os.path.join(FLAGS.output, 'grid.png'))}")


def main(argv):
    del argv
    try:
        if FLAGS.write_reference:
            write_reference()
        else:
            evaluate()
    except (ValueError, FileNotFoundError, ImportError) as error:
        logging.debug("evaluate failed", exc_info=True)
        sys.exit(f"evaluate: {error}")


if __name__ == "__main__":
    app.run(main)
