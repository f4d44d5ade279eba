"""What a set of images is measured by: FID (Inception), CLIP score, and the shapes judge.

`Evaluators` holds the networks asked for (each optional); `features` streams images
through them in batches; `reference_statistics` makes the statistics FID compares with
from real images, and `evaluate` turns samples (and what each was asked to show) into
the numbers of a report. A reference is a folder of one statistics file per feature space
(`inception.npz`, `judge.npz`, pytorch-fid's mu/sigma format) or one Inception `.npz`.
"""
import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np

from mdm_jax.evaluation import fid, inception
from mdm_jax.evaluation import images as images_lib
from mdm_jax.evaluation import judge as judge_lib

INCEPTION, JUDGE = "inception", "judge"
REFERENCE_INFO = "reference.json"
WRITE_REFERENCE_HINT = ("make one with `python -m mdm_jax.evaluate --write_reference=DIR "
                        "--config=CONFIG` (it reads the config's data set)")


def judge_path(choice, config=None):
    """The judge a --judge / config.eval.judge choice names: None (no judge), '' (the
    packaged one) or a checkpoint path. 'auto' is the packaged judge for a run (config)
    trained on the shapes data, else none."""
    if choice == "auto":
        return "" if config is not None and config.data.dataset == "shapes" else None
    return {"packaged": "", "none": None}.get(choice, choice)


@dataclasses.dataclass
class Evaluators:
    judge: Optional[judge_lib.Judge] = None
    inception_params: Any = None
    inception_mode: str = "pytorch_fid"
    clip: Any = None                        # a clip.CLIPScorer
    batch_size: int = 64

    @classmethod
    def create(cls, judge_path=None, inception_weights="", inception_mode="pytorch_fid",
               clip_dir="", batch_size=64):
        """judge_path: None for no judge, '' for the packaged one, or a checkpoint."""
        if inception_mode not in inception.MODES:
            raise ValueError(f"inception_mode must be one of {inception.MODES}; got "
                             f"{inception_mode!r}.")
        judge = None if judge_path is None else judge_lib.Judge.load(judge_path or None)
        params = None
        if inception_weights:
            params = jax.device_put(inception.load_params(os.path.expanduser(inception_weights)))
        scorer = None
        if clip_dir:
            from mdm_jax.evaluation import clip  # noqa: PLC0415 (tokenizers is slow to import)
            scorer = clip.CLIPScorer.from_pretrained(os.path.expanduser(clip_dir),
                                                     batch_size=batch_size)
        return cls(judge, params, inception_mode, scorer, batch_size)

    @property
    def feature_spaces(self):
        return [name for name, on in ((INCEPTION, self.inception_params is not None),
                                      (JUDGE, self.judge is not None)) if on]

    def features(self, images):
        """{feature space: float64 [N, d]} of images (NHWC, [-1, 1] or uint8)."""
        out = {}
        if self.inception_params is not None:
            out[INCEPTION] = np.concatenate([
                np.asarray(inception.features(self.inception_params,
                                              images[i:i + self.batch_size],
                                              self.inception_mode), np.float64)
                for i in range(0, len(images), self.batch_size)])
        if self.judge is not None:
            out[JUDGE] = self.judge.predict(images, self.batch_size)[1]
        return out


def reference_statistics(evaluators, batches):
    """{feature space: (mu, sigma)} over the images of an iterable of batches."""
    stats = {name: fid.FeatureStatistics() for name in evaluators.feature_spaces}
    if not stats:
        raise ValueError("No feature space to make reference statistics in: pass "
                         "--inception_weights or use the shapes judge.")
    for images in batches:
        for name, feats in evaluators.features(images).items():
            stats[name].add(feats)
    return {name: s.statistics() for name, s in stats.items()}


def write_dataset_reference(evaluators, data_config, num_images, directory):
    """Reference statistics of the first num_images images of a data set's configured
    split, saved to directory; returns their feature spaces."""
    batches = images_lib.dataset_batches(data_config, num_images)
    statistics = reference_statistics(evaluators, batches)
    save_reference(directory, statistics, dataset=data_config.dataset,
                   split=data_config.split, image_size=data_config.image_size,
                   num_images=num_images, inception_mode=evaluators.inception_mode)
    return sorted(statistics)


def save_reference(directory, statistics, **info):
    os.makedirs(directory, exist_ok=True)
    for name, (mu, sigma) in statistics.items():
        fid.save_statistics(os.path.join(directory, f"{name}.npz"), mu, sigma)
    with open(os.path.join(directory, REFERENCE_INFO), "w") as f:
        json.dump({"feature_spaces": sorted(statistics), **info}, f, indent=2)


def load_reference(path):
    """{feature space: (mu, sigma)} from a reference folder, or an Inception .npz."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        found = {name: fid.load_statistics(os.path.join(path, f"{name}.npz"))
                 for name in (INCEPTION, JUDGE)
                 if os.path.isfile(os.path.join(path, f"{name}.npz"))}
        if not found:
            raise FileNotFoundError(f"{path} holds no inception.npz or judge.npz: "
                                    f"{WRITE_REFERENCE_HINT}.")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No reference statistics at {path}: {WRITE_REFERENCE_HINT}, "
                                "or give a pytorch-fid .npz of mu and sigma.")
    return {INCEPTION: fid.load_statistics(path)}


def wanted_attributes(conditions):
    """What the judge should see in each sample: its label's shape and colour, or the
    attributes its caption names. None when samples are unconditional."""
    if not conditions:
        return None
    if isinstance(conditions[0], str):
        return [judge_lib.caption_attributes(c) for c in conditions]
    return [judge_lib.label_attributes(c) for c in conditions]


def evaluate(evaluators, images, conditions=(), reference=None):
    """The report's numbers for samples `images` [N, H, W, C] and what each was asked to
    show (`conditions`: labels, prompts, or empty). reference: load_reference's dict."""
    images = np.asarray(images)
    report = {"num_images": int(len(images))}
    feats = evaluators.features(images)
    reference = reference or {}
    if reference and not set(reference) & set(feats):
        raise ValueError(f"The reference has statistics for {sorted(reference)} but no "
                         f"network for them was given (have {sorted(feats) or 'none'}).")
    for name, values in feats.items():
        if name in reference:
            if len(values) < 2:
                raise ValueError("FID needs at least 2 images.")
            mu, sigma = reference[name]
            s = fid.FeatureStatistics()
            s.add(values)
            key = "fid" if name == INCEPTION else "judge_fid"
            report[key] = fid.frechet_distance(*s.statistics(), mu, sigma)
    if evaluators.judge is not None:
        wanted = wanted_attributes(list(conditions))
        if wanted is not None:
            predictions, _ = evaluators.judge.predict(images, evaluators.batch_size)
            agreement = judge_lib.agreement(predictions, wanted)
            report["judge_accuracy"] = agreement.pop("all")
            report["judge_accuracy_by_attribute"] = agreement
    if evaluators.clip is not None:
        prompts = list(conditions)
        if not prompts or not isinstance(prompts[0], str):
            raise ValueError("The CLIP score needs prompts: sample with --prompts (a text "
                             "model) or drop --clip.")
        report["clip_score"] = float(np.mean(evaluators.clip.score(images, prompts)))
    return report
