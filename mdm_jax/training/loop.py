"""The training loop: stages in order, each started from the one before it.

A stage that has checkpoints resumes from the latest; a stage without any starts by
growing the previous stage's final checkpoint (runs/growth.py), or from scratch if it is
the first. The run directory's layout is runs/layout.py's.
"""
import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mdm_jax import diffusion
from mdm_jax.conditioning.text import TextConditioning, check_text, data_text_inputs
from mdm_jax.data import pipeline as data_pipeline
from mdm_jax.data import sources as data_sources
from mdm_jax.models import build_model
from mdm_jax.models.flops import training_flops_per_example
from mdm_jax.parallel import sharding
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.runs import growth
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.layout import RunDir
from mdm_jax.runs.lock import WorkdirLock
from mdm_jax.runs.stages import (
    fresh_params,
    plan_stages,
    stage_checkpoint_config,
    stage_data_config,
    top_level_shape,
)
from mdm_jax.sampling import images, sampler
from mdm_jax.training import metrics as metrics_lib
from mdm_jax.training.ahead import CompileAhead
from mdm_jax.training.evaluation import TrainingEvaluation
from mdm_jax.training.preemption import PreemptionGuard
from mdm_jax.training.profiling import StepTrace
from mdm_jax.training.step import make_train_step
from mdm_jax.training.validate import validate

# Sample-grid keys are fold_in(key(seed), GRID_KEY_OFFSET + step): far from the training
# keys fold_in(key(seed), global step), so a grid never reuses a step's noise.
GRID_KEY_OFFSET = 10_000_000


@dataclasses.dataclass
class TrainResult:
    metrics: dict          # the last stage's final metrics ({} if nothing was left to do)
    preempted: bool        # stopped early by SIGTERM, after saving
    stage: str = None      # the stage it stopped in
    step: int = None       # the step of that stage it saved


def check_data_position_fits(config, saved, checkpoints, step):
    """The data iterator's saved position is per process and per worker: resuming with
    other counts can't continue exactly, so it is refused with the fix in the message.
    A checkpoint without a data position (grown or converted) starts the data afresh."""
    if not checkpoints.has_data_position(step):
        return
    saved_workers = saved["data"]["num_workers"]
    saved_processes = (saved.get("stage") or {}).get("process_count", jax.process_count())
    if saved_workers != config.data.num_workers or saved_processes != jax.process_count():
        raise ValueError(
            f"Checkpoint {checkpoints.directory}/{step} was saved by {saved_processes} "
            f"process(es) with data.num_workers={saved_workers}; this run has "
            f"{jax.process_count()} and {config.data.num_workers}. The data position can "
            f"only resume exactly with the same counts: pass "
            f"--config.data.num_workers={saved_workers} on {saved_processes} process(es).")


def initial_state(config, run_dir, stages, stage, text, optimizer, checkpoints, mesh, rules,
                  data_iterator, before_making=None):
    """Resume, grow or start fresh; returns (state, state shardings).

    before_making(abstract state), if given, is called before a grown or fresh state is
    made (not on resume): the trainer starts compiling its step there."""
    # The fresh params' shapes once: the state's target, and what fresh values fill.
    abstract_params = jax.eval_shape(lambda: fresh_params(stage, text, config.seed))
    abstract = sharding.abstract_with_shardings(
        lambda p: state_lib.state_from_params(p, optimizer), mesh, rules, abstract_params)
    step, state = checkpoints.restore_newest_intact(
        lambda: abstract, data_iterator,
        check_saved=lambda saved, step: check_data_position_fits(config, saved, checkpoints,
                                                                 step))
    if step is not None:
        logging.info("Stage %s: resumed from step %d.", stage.name, step)
        return state, jax.tree_util.tree_map(lambda x: x.sharding, abstract)
    if before_making is not None:
        before_making(abstract)
    if stage.index > 0:
        previous = run_dir.stage_checkpoints(stages[stage.index - 1].name)
        return growth.grown_state(config, stages, stage, text, optimizer, mesh, rules,
                                  previous)
    params = sharding.create_leafwise(abstract_params, mesh, rules, config.seed)
    return state_lib.create_state(abstract_params, params, params, optimizer, mesh, rules)


GENERATED_DATASETS = ("shapes", "moving_shapes")


def prepare_data(config):
    """Generates the shapes or moving shapes data set on first use (they need no
    download); other data sets must be built beforehand (python -m mdm_jax.build_data),
    which validation checks."""
    if config.data.dataset in GENERATED_DATASETS:
        if jax.process_index() == 0:
            data_sources.build(config.data)
        multihost_utils.sync_global_devices("generated data set built")


def use_compile_cache(directory):
    """Compiled XLA programs persist in `directory` (config.compile_cache_dir, '' for
    none), so a second launch of the same config skips most of its compile time; the
    small programs too (a state's leaf initialisers, each well under a second)."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def train(config, workdir):
    """Runs every stage of `config` in workdir (a local folder or a URL); returns a
    TrainResult. Builds the shapes data if needed, validates the config, writes it to the
    workdir, and holds the workdir's lock while it runs."""
    metrics_lib.quiet_library_logs()
    use_compile_cache(config.get("compile_cache_dir", ""))
    prepare_data(config)
    check_text(config)
    validate(config)
    run_dir = RunDir(workdir)
    with WorkdirLock(run_dir) as lock:
        if jax.process_index() == 0:
            run_dir.root.mkdir(parents=True, exist_ok=True)
            run_dir.config_json.write_text(config.to_json_best_effort(indent=2))
        mesh, rules = sharding.mesh_and_rules(config)
        stages = plan_stages(config)
        text = TextConditioning.create(config, mesh, rules)
        guard = PreemptionGuard()
        evaluation = TrainingEvaluation(config, run_dir) if config.eval_every else None
        log = metrics_lib.MetricsLog(run_dir, on_write=lock.refresh)
        result = TrainResult(metrics={}, preempted=False)
        try:
            for stage in stages:
                stage_run = StageRun(config, run_dir, stages, stage, text, mesh, rules, log)
                result = stage_run.train(guard, evaluation)
                if result.preempted:
                    break
        finally:
            log.close()
    return result


class StageRun:
    """One stage's training: its state, data, jitted step and periodic actions."""

    def __init__(self, config, run_dir, stages, stage, text, mesh, rules, log):
        self.config, self.run_dir, self.stage, self.text, self.mesh = (
            config, run_dir, stage, text, mesh)
        self.log = log
        self.created_at = time.perf_counter()
        st = stage.config
        self.optimizer = state_lib.make_optimizer(config.optimizer, st.learning_rate,
                                                  st.warmup_steps)
        self.model = build_model(stage.model_config)
        self.data_config = stage_data_config(config, stage)
        self.data_iterator = data_pipeline.make_iterator(
            self.data_config, global_batch_size=st.global_batch_size,
            text=data_text_inputs(config), seed=config.data.seed + stage.index)
        self.checkpoints = checkpoints_lib.StageCheckpoints(
            run_dir.stage_checkpoints(stage.name), keep=config.keep_checkpoints)
        self.jitted, self.ahead, self.first_batch = None, None, None
        self.state, self.state_shardings = initial_state(
            config, run_dir, stages, stage, text, self.optimizer, self.checkpoints, mesh,
            rules, self.data_iterator, before_making=self.compile_ahead)
        self.saved_config = stage_checkpoint_config(config, stage)
        self.grid_sampler = None

    def jitted_step(self, state_shardings):
        st, stage = self.stage.config, self.stage
        step_fn = make_train_step(
            self.model, stage.diffusion, stage.scales, self.optimizer,
            state_lib.learning_rate_schedule(st.learning_rate, st.warmup_steps),
            self.config.ema_decay, text_fn=self.text.text_fn(),
            gradient_accumulation_steps=st.get("gradient_accumulation_steps", 1),
            batch_shards=sharding.batch_shards(self.mesh))
        return jax.jit(step_fn, donate_argnums=0,
                       out_shardings=(state_shardings, sharding.replicated(self.mesh)))

    def next_batch(self):
        """(the next host batch, with its data counters; it as global arrays on the mesh)."""
        host_batch = next(self.data_iterator)
        return host_batch, data_pipeline.to_global_arrays(
            data_pipeline.model_inputs(host_batch), self.mesh,
            sharding.batch_sharding(self.mesh, 1).spec)

    def compile_ahead(self, abstract_state):
        """Compiles the step for the first batch in the background while the (fresh or
        grown) state is made (training/ahead.py)."""
        self.first_batch = self.next_batch()
        self.jitted = self.jitted_step(jax.tree_util.tree_map(lambda x: x.sharding,
                                                              abstract_state))
        self.ahead = CompileAhead(self.jitted, abstract_state, self.first_batch[1],
                                  jax.random.key(0), self.text.frozen_params)

    def train(self, guard, evaluation=None):
        config, stage, st = self.config, self.stage, self.stage.config
        start = int(jax.device_get(self.state.step))
        if start >= st.steps:
            self.checkpoints.close()
            return TrainResult(metrics={}, preempted=False)
        self.log.begin_stage(stage, start)
        jitted = self.jitted or self.jitted_step(self.state_shardings)
        if self.ahead is not None:
            self.ahead.wait()  # a call while it compiles would compile a second time
        throughput = metrics_lib.Throughput(
            training_flops_per_example(
                stage.model_config, stage.image_size, config.text.max_length,
                level_rows=diffusion.level_batch_sizes(
                    stage.diffusion.mixed_ratio, st.global_batch_size, len(stage.scales),
                    sharding.batch_shards(self.mesh)
                    * st.get("gradient_accumulation_steps", 1))),
            num_chips=jax.device_count(),
            peak_flops_per_chip=metrics_lib.peak_flops_per_chip(jax.devices()[0]))
        base_key = jax.random.key(config.seed)
        trace = StepTrace(config.get("profile_steps", 0), start, self.run_dir.tensorboard)
        metrics, stop, done = None, False, start
        for step in range(start, st.steps):
            trace.before(step)
            (host_batch, batch), self.first_batch = self.first_batch or self.next_batch(), None
            self.log.counters.add(host_batch)
            rng = jax.random.fold_in(base_key, stage.step_offset + step)
            self.state, metrics = jitted(self.state, batch, rng, self.text.frozen_params)
            if step == start:
                # Throughput counts from the end of the first step: compilation isn't training.
                jax.block_until_ready(metrics)
                throughput.reset()
                self.log.message(f"Stage {stage.name}: first step done "
                                 f"{time.perf_counter() - self.created_at:.1f} s after the "
                                 "stage began (state, data, compile).")
            else:
                throughput.count(st.global_batch_size)
            trace.after(step, metrics)
            done = step + 1
            stop = guard.should_stop(sync=done % config.log_every == 0)
            save = done % config.checkpoint_every == 0 or done == st.steps or stop
            if done % config.log_every == 0 or save:
                # Every save is logged, so a resume finds the counters it continues from.
                self.log.write(stage.step_offset + done,
                               {**jax.device_get(metrics), **throughput.report()})
            self.log.advance(1)
            with throughput.paused():
                self.periodic_actions(done, save, stop, evaluation)
            if stop:
                break
        trace.finish(metrics)
        self.checkpoints.wait()
        self.checkpoints.close()
        final = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        return TrainResult(metrics=final, preempted=stop, stage=stage.name, step=done)

    def periodic_actions(self, done, save, stop, evaluation):
        """Checkpoint, sample grid and evaluation, each when due after step `done`."""
        config, stage = self.config, self.stage
        if save:
            self.checkpoints.save(done, self.state, self.saved_config, self.data_iterator,
                                  force=stop)
            self.log.message(f"Stage {stage.name}: saved step {done}.")
        if stop:
            return
        final = done == stage.config.steps
        if config.sample.num_samples and (
                final or (config.sample_every and done % config.sample_every == 0)):
            self.write_samples(done)
        if evaluation and (final or done % config.eval_every == 0):
            self.log.write(stage.step_offset + done,
                           evaluation(stage, self.data_config, self.text, self.mesh,
                                      self.state.ema_params))

    def write_samples(self, step):
        """A grid of samples from the EMA params, every level side by side, as a PNG and
        in TensorBoard. A model conditioned on both labels and text gets both."""
        config, stage, text = self.config, self.stage, self.text
        n = config.sample.num_samples
        num_classes = stage.model_config.num_classes
        labels = (jax.numpy.arange(n) % num_classes) if num_classes > 0 else None
        lm, mask, uncond = None, None, (None, None)
        if config.text.kind != "none":
            prompts = list(config.sample.prompts) or [""]
            prompts = [prompts[i % len(prompts)] for i in range(n)]
            lm, mask = text.encode_prompts(self.state.ema_params, prompts)
            uncond = text.encode_prompts(self.state.ema_params, [""] * n)
        if self.grid_sampler is None:
            self.grid_sampler = sampler.make_sampler(
                self.model, stage.diffusion, stage.scales, top_level_shape(stage, n),
                sampler=config.sample.sampler, num_steps=config.sample.num_steps,
                eta=config.sample.eta, guidance_scale=config.sample.guidance)
        key = jax.random.fold_in(jax.random.key(config.seed), GRID_KEY_OFFSET + step)
        levels = self.grid_sampler(self.state.ema_params["unet"], key, labels, lm, mask,
                                   *uncond)
        levels = [multihost_utils.process_allgather(x, tiled=True) for x in levels]
        path = self.run_dir.sample_grid(stage.name, step)
        grid = images.write_grid(path, levels)
        self.log.image(stage.step_offset + step, f"samples/{stage.name}", grid)
        self.log.message(f"Wrote {path}")
