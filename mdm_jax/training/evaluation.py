"""Evaluation during training (`config.eval_every`): samples of the EMA params measured
by mdm_jax.evaluate (judge accuracy and judge-FID on shapes, FID and CLIP score when their
networks are configured), logged as eval/* scalars to TensorBoard and metrics.jsonl.

Reference statistics come from `config.eval.reference`, or are made once per image size
from the run's own data set and kept in workdir/eval_reference/<size>px.
"""
import os
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

from mdm_jax.evaluation import metrics
from mdm_jax.sampling import generate


class TrainingEvaluation:
    def __init__(self, config, run_dir):
        self.config = config
        self.eval = config.eval
        self.run_dir = run_dir
        self.evaluators = metrics.Evaluators.create(
            metrics.judge_path(self.eval.judge, config), self.eval.inception_weights,
            self.eval.inception_mode, self.eval.clip_dir, batch_size=self.eval.batch_size)
        self._references = {}
        self._samplers = {}

    def reference(self, stage, data_config):
        if self.eval.reference:
            return metrics.load_reference(self.eval.reference)
        if not self.evaluators.feature_spaces:
            return None
        if stage.image_size not in self._references:
            directory = str(self.run_dir.eval_reference(stage.image_size))
            if not os.path.isdir(directory):
                if jax.process_index() == 0:
                    metrics.write_dataset_reference(self.evaluators, data_config,
                                                    self.eval.num_reference, directory)
                multihost_utils.sync_global_devices("evaluation reference written")
            self._references[stage.image_size] = metrics.load_reference(directory)
        return self._references[stage.image_size]

    def conditions(self, stage):
        n = self.eval.num_samples
        if self.config.text.kind != "none":
            prompts = list(self.eval.prompts) or list(self.config.sample.prompts)
            return [prompts[i % len(prompts)] for i in range(n)]
        num_classes = stage.model_config.num_classes
        return [i % num_classes for i in range(n)] if num_classes else []

    def __call__(self, stage, data_config, text, mesh, ema_params):
        """{eval/...: number} of the current EMA params; eval/seconds is its wall time."""
        start = time.perf_counter()
        e = self.eval
        guidance = (self.config.sample.guidance if e.guidance is None
                    else e.guidance)
        options = generate.Options(num_steps=e.num_steps, sampler=e.sampler,
                                       seed=e.seed, batch_size=e.batch_size)
        if stage.name not in self._samplers:
            self._samplers[stage.name] = generate.stage_sampler(stage, options, guidance,
                                                                    mesh)
        conditions = self.conditions(stage)
        levels = generate.sample_levels(stage, ema_params, text, mesh, conditions,
                                            e.num_samples, options, guidance,
                                            run=self._samplers[stage.name])
        report = metrics.evaluate(self.evaluators, levels[0], conditions,
                                  self.reference(stage, data_config))
        scalars = {f"eval/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
        for attribute, value in report.get("judge_accuracy_by_attribute", {}).items():
            scalars[f"eval/judge_{attribute}"] = value
        scalars["eval/seconds"] = time.perf_counter() - start
        logging.info("Evaluation of stage %s: %s", stage.name, scalars)
        return scalars
