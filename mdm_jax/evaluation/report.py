"""Evaluating a model's samples or a folder of images, and writing the report: what
`python -m mdm_jax.evaluate` runs.

OUTPUT/report.json holds the numbers and the settings, OUTPUT/grid.png the first samples
(every level side by side). The one module of evaluation/ that samples (sampling.generate);
the networks and the numbers themselves are in metrics.py.
"""
import dataclasses
import json
import os

import jax
import numpy as np

from mdm_jax.evaluation import images as images_lib
from mdm_jax.evaluation import metrics
from mdm_jax.sampling import generate
from mdm_jax.sampling import images as sample_images


@dataclasses.dataclass(frozen=True)
class Networks:
    """Which evaluation networks measure the images (see metrics.Evaluators.create)."""
    judge: str = "auto"           # auto, packaged, none, or a judge checkpoint
    inception_weights: str = ""
    inception_mode: str = "pytorch_fid"
    clip: str = ""

    def evaluators(self, config):
        return metrics.Evaluators.create(metrics.judge_path(self.judge, config),
                                         self.inception_weights, self.inception_mode,
                                         self.clip)


def write_reference(config, networks, directory, num_images):
    """Statistics of num_images images of the config's data set (data.split), for FID;
    returns the line to print."""
    spaces = metrics.write_dataset_reference(networks.evaluators(config), config.data,
                                             num_images, directory)
    return (f"Wrote reference statistics ({', '.join(spaces)}) of {num_images} "
            f"{config.data.dataset}/{config.data.split} images to {directory}")


def evaluate_checkpoint(config, checkpoint, options, networks, output, reference=None,
                        grid_size=16):
    """The report of samples of a run (generate.Options say how to sample); a
    class-conditional model without labels samples every class in turn."""
    num_classes = config.model.get("num_classes", 0)
    if not options.labels and not options.prompts and num_classes \
            and config.text.kind == "none":
        options = dataclasses.replace(options, labels=tuple(range(num_classes)))
    levels, conditions = generate.sample_checkpoint(config, checkpoint, options)
    used = generate.with_config_defaults(options, config)
    settings = {"checkpoint": _absolute(checkpoint), "stage": options.stage,
                "sampler": used.sampler, "num_steps": used.num_steps,
                "guidance": used.guidance, "seed": options.seed}
    return _write(config, networks, levels, conditions, reference, output, grid_size,
                  {"num_samples": options.num_samples, **settings})


def evaluate_folder(config, folder, num_images, conditions, networks, output,
                    reference=None, grid_size=16):
    """The report of at most num_images images of a folder; conditions (labels or
    prompts) are cycled over them. config (may be None) picks the judge for 'auto'."""
    images = images_lib.read_folder(folder, num_images)
    conditions = [conditions[i % len(conditions)] for i in range(len(images))
                  ] if conditions else []
    levels = [images.astype(np.float32) / 127.5 - 1]
    return _write(config, networks, levels, conditions, reference, output, grid_size,
                  {"num_samples": num_images, "images": _absolute(folder)})


def summary(report, output):
    """The lines the command prints."""
    lines = [json.dumps({k: v for k, v in report.items() if k != "settings"})]
    if "judge_accuracy" in report:
        lines.append(f"Judged: {100 * report['judge_accuracy']:.1f}% of "
                     f"{report['num_images']} samples show what they were asked for; grid: "
                     f"{_absolute(os.path.join(output, 'grid.png'))}")
    return lines


def _absolute(path):
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _write(config, networks, levels, conditions, reference, output, grid_size, settings):
    reference_stats = metrics.load_reference(reference) if reference else None
    report = metrics.evaluate(networks.evaluators(config), levels[0], conditions,
                              reference_stats)
    report["settings"] = {**settings, "reference": reference}
    if jax.process_index() == 0:  # every process holds all the samples and the same report
        os.makedirs(output, exist_ok=True)
        sample_images.write_grid(os.path.join(output, "grid.png"),
                                 [level[:grid_size] for level in levels])
        with open(os.path.join(output, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    return report
