"""The training loop: stages in order, growing the model between them.

Each stage trains the innermost `num_levels` levels of the configured model at its own
resolution, batch size and learning rate, in workdir/checkpoints/<stage name>. A stage
that has checkpoints resumes from the latest; a stage without any starts by growing the
previous stage's final checkpoint (or from scratch if it is the first).
"""
import dataclasses
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mdm_jax import diffusion
from mdm_jax.data import pipeline as data_pipeline
from mdm_jax.data import shapes as shapes_data
from mdm_jax.data import sources as data_sources
from mdm_jax.models import build_model, config as model_config_lib, init_params
from mdm_jax.models.flops import training_flops_per_example
from mdm_jax.train import checkpoint as ckpt_lib
from mdm_jax.train.evaluation import TrainingEvaluation
from mdm_jax.train import growth, metrics as metrics_lib, samples, sharding, state as state_lib
from mdm_jax.train.preemption import PreemptionGuard
from mdm_jax.train import text_conditioning
from mdm_jax.train.step import make_train_step
from mdm_jax.train.validate import validate


@dataclasses.dataclass
class Stage:
    """Everything static about one stage, derived from the config."""
    name: str
    index: int
    config: ml_collections.ConfigDict       # the stage's entry in config.stages
    model_config: ml_collections.ConfigDict
    diffusion: diffusion.DiffusionConfig
    scales: tuple
    image_size: int
    step_offset: int                         # global step of this stage's step 0


def plan_stages(config):
    """The stages of `config` in order, with their models, image sizes and step offsets."""
    full_scales = model_config_lib.nest_scales(config.model)
    out, offset = [], 0
    # ConfigDict iterates keys sorted by name; stages run from fewest levels to most.
    ordered = sorted(config.stages.items(), key=lambda item: item[1].num_levels)
    for index, (name, st) in enumerate(ordered):
        model_cfg = growth.stage_model_config(config.model, st.num_levels)
        scales = tuple(model_config_lib.nest_scales(model_cfg))
        image_size = config.data.image_size * scales[0] // full_scales[0]
        values = dict(config.diffusion)
        for key in ("multi_res_weights", "mixed_ratio"):
            if st.get(key) is not None:
                values[key] = st[key]
        diff = diffusion.DiffusionConfig.from_dict(values)
        diff.check_levels(len(scales))
        out.append(Stage(name, index, st, model_cfg, diff, scales, image_size, offset))
        offset += st.steps
    return out


def stage_data_config(config, stage):
    data = config.data.copy_and_resolve_references()
    data.image_size = stage.image_size
    return data


def _fresh_params(stage, text, seed):
    """Boxed fresh trainable params: the stage's UNet, and a trainable text encoder."""
    unet_key, text_key = jax.random.split(jax.random.key(seed))
    params = {"unet": init_params(stage.model_config, unet_key, stage.image_size, boxed=True)}
    if text.trainable:
        params["text"] = text.init_boxed(text_key)
    return params


def _boxed_state_fn(stage, text, optimizer, seed):
    def make_boxed():
        return state_lib.state_from_params(_fresh_params(stage, text, seed), optimizer)
    return make_boxed


def _grown_state_fn(stage, text, optimizer, seed):
    """The new stage's state: old params and EMA in the inner UNet, the text encoder kept."""
    def make_boxed(old_params, old_ema):
        fresh = _fresh_params(stage, text, seed)
        growth.check_inner_matches(old_params["unet"], fresh["unet"])

        def grown(old):
            return {**fresh, **old, "unet": growth.insert_inner(fresh["unet"], old["unet"])}
        state = state_lib.state_from_params(grown(old_params), optimizer)
        return state.replace(ema_params=grown(old_ema))
    return make_boxed


def previous_params(directory, previous, text, mesh, rules, seed):
    """Params and EMA of a checkpoint of stage `previous` in `directory` (its latest step),
    sharded onto `mesh`. Fails naming the mismatch if it is another stage's checkpoint."""
    checkpoints = ckpt_lib.StageCheckpoints(directory)
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {directory}: train stage {previous.name} "
                                "first.")
    saved = checkpoints.read_config(step).get("stage") or {}
    checkpoints.close()
    if saved.get("num_levels") != previous.config.num_levels:
        raise ValueError(
            f"{directory} holds a checkpoint of stage {saved.get('name')!r} with "
            f"{saved.get('num_levels')} level(s); growing into this stage needs one with "
            f"{previous.config.num_levels} (stage {previous.name}).")

    def make_boxed():
        p = _fresh_params(previous, text, seed)
        return {"params": p, "ema_params": p}
    target = state_lib.abstract_with_shardings(make_boxed, mesh, rules)
    restored, _ = ckpt_lib.restore_params(directory, target, step)
    return restored["params"], restored["ema_params"]


def grown_state(config, stages, stage, text, optimizer, mesh, rules, directory):
    """The state of `stage` grown from the previous stage's checkpoint in `directory`."""
    previous = stages[stage.index - 1]
    old_params, old_ema = previous_params(directory, previous, text, mesh, rules, config.seed)
    logging.info("Stage %s: grown from %s.", stage.name, directory)
    return state_lib.create_sharded(_grown_state_fn(stage, text, optimizer, config.seed),
                                    mesh, rules, old_params, old_ema)


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


def initial_state(config, workdir, stages, stage, text, optimizer, checkpoints, mesh, rules,
                  data_iterator):
    """Resume, grow or start fresh; returns (state, state shardings)."""
    make_boxed = _boxed_state_fn(stage, text, optimizer, config.seed)
    latest = checkpoints.latest_step()
    if latest is not None:
        check_data_position_fits(config, checkpoints.read_config(latest), checkpoints, latest)
        abstract = state_lib.abstract_with_shardings(make_boxed, mesh, rules)
        state = checkpoints.restore(latest, abstract, data_iterator)
        logging.info("Stage %s: resumed from step %d.", stage.name, latest)
        return state, jax.tree_util.tree_map(lambda x: x.sharding, abstract)
    if stage.index > 0:
        directory = os.path.join(workdir, "checkpoints", stages[stage.index - 1].name)
        return grown_state(config, stages, stage, text, optimizer, mesh, rules, directory)
    return state_lib.create_sharded(make_boxed, mesh, rules)


def prepare_data(config):
    """Generates the shapes data set on first use (it needs no download); other data sets
    must be built beforehand (python -m mdm_jax.data.build), which validation checks."""
    if config.data.dataset == "shapes":
        if jax.process_index() == 0:
            cfg = config.data.shapes
            shapes_data.build(data_sources.data_dir(config.data), cfg.image_size,
                              cfg.num_examples, cfg.seed, **shapes_data.variant(cfg))
        multihost_utils.sync_global_devices("shapes data set built")


def train(config, workdir):
    """Runs every stage of `config` in workdir; returns the final stage's last metrics.

    Builds the shapes data if needed, validates the config, writes it to the workdir.
    """
    prepare_data(config)
    text_conditioning.resolve(config)
    validate(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    stages = plan_stages(config)
    text = text_conditioning.TextConditioning.create(config, mesh, rules)
    guard = PreemptionGuard()
    evaluation = TrainingEvaluation(config, workdir) if config.eval_every else None
    last = {}
    for stage in stages:
        last = train_stage(config, workdir, stages, stage, text, mesh, rules, guard,
                           evaluation)
        if guard.stopped:
            break
    return last


def stage_checkpoint_config(config, stage):
    """The config saved with a stage's checkpoints: the whole config plus which stage."""
    saved = config.copy_and_resolve_references()
    saved.unlock()
    saved.stage = ml_collections.ConfigDict(dict(
        name=stage.name, num_levels=stage.config.num_levels, image_size=stage.image_size,
        process_count=jax.process_count()))
    return saved


def train_stage(config, workdir, stages, stage, text, mesh, rules, guard, evaluation=None):
    st = stage.config
    optimizer = state_lib.make_optimizer(config.optimizer, st.learning_rate, st.warmup_steps)
    lr_fn = state_lib.learning_rate_schedule(st.learning_rate, st.warmup_steps)
    model = build_model(stage.model_config)
    data_iterator = data_pipeline.make_iterator(
        stage_data_config(config, stage), global_batch_size=st.global_batch_size,
        seed=config.seed + stage.index)
    checkpoints = ckpt_lib.StageCheckpoints(
        os.path.join(workdir, "checkpoints", stage.name), keep=config.keep_checkpoints)
    state, state_shardings = initial_state(config, workdir, stages, stage, text, optimizer,
                                           checkpoints, mesh, rules, data_iterator)
    start = int(jax.device_get(state.step))
    if start >= st.steps:
        checkpoints.close()
        return {}

    stage_config = stage_checkpoint_config(config, stage)
    step_fn = make_train_step(model, stage.diffusion, stage.scales, optimizer, lr_fn,
                              config.ema_decay, text_fn=text.text_fn())
    batch_spec = sharding.batch_sharding(mesh, 1).spec
    jitted = jax.jit(step_fn, donate_argnums=0,
                     out_shardings=(state_shardings, sharding.replicated(mesh)))
    throughput = metrics_lib.Throughput(
        training_flops_per_example(stage.model_config, stage.image_size),
        num_chips=jax.device_count(),
        peak_flops_per_chip=metrics_lib.peak_flops_per_chip(jax.devices()[0]))
    log = metrics_lib.MetricsLog(workdir, total_steps=st.steps, initial_step=start,
                                 description=f"stage {stage.name}")
    base_key = jax.random.key(config.seed)
    counters = data_pipeline.Counters()
    metrics = None
    for step in range(start, st.steps):
        host_batch = next(data_iterator)
        counters.add(host_batch)
        batch = data_pipeline.to_global_arrays(data_pipeline.model_inputs(host_batch), mesh,
                                               batch_spec)
        rng = jax.random.fold_in(base_key, stage.step_offset + step)
        state, metrics = jitted(state, batch, rng, text.frozen_params)
        if step == start:
            # Throughput counts from the end of the first step: compilation isn't training.
            jax.block_until_ready(metrics)
            throughput.reset()
        else:
            throughput.count(st.global_batch_size)
        done = step + 1
        if done % config.log_every == 0 or done == st.steps:
            scalars = {**jax.device_get(metrics), **throughput.report(), **counters.totals()}
            log.write(stage.step_offset + done, scalars)
        log.advance(1)
        stop = guard.should_stop(sync=done % config.log_every == 0)
        if done % config.checkpoint_every == 0 or done == st.steps or stop:
            throughput.pause()
            checkpoints.save(done, state, stage_config, data_iterator, force=stop)
            throughput.resume()
        grid_due = (config.sample_every and done % config.sample_every == 0) or done == st.steps
        if config.sample.num_images and grid_due:
            throughput.pause()
            write_samples(config, workdir, stage, model, text, state, done)
            throughput.resume()
        if evaluation and (done % config.eval_every == 0 or done == st.steps):
            throughput.pause()
            log.write(stage.step_offset + done,
                      evaluation(stage, stage_data_config(config, stage), text, mesh,
                                 state.ema_params))
            throughput.resume()
        if stop:
            logging.warning("Stop requested (SIGTERM): saved step %d of stage %s.", done,
                            stage.name)
            break
    checkpoints.wait()
    checkpoints.close()
    log.close()
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def write_samples(config, workdir, stage, model, text, state, step):
    """A grid of samples from the EMA params, every level side by side."""
    n = config.sample.num_images
    num_classes = stage.model_config.num_classes
    labels = (jax.numpy.arange(n) % num_classes) if num_classes > 0 else None
    lm, mask, uncond = None, None, (None, None)
    if config.text.kind != "none":
        prompts = list(config.sample.prompts) or [""]
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        lm, mask = text.encode_prompts(state.ema_params, prompts)
        uncond = text.encode_prompts(state.ema_params, [""] * n)
    key = jax.random.fold_in(jax.random.key(config.seed), 10_000_000 + step)
    shape = (n, stage.image_size, stage.image_size, stage.model_config.input_channels)
    sampler = samples.make_sampler(
        model, stage.diffusion, stage.scales, shape, sampler=config.sample.sampler,
        num_steps=config.sample.steps, eta=config.sample.ddim_eta,
        guidance_scale=config.sample.guidance_scale)
    levels = sampler(state.ema_params["unet"], key, labels, lm, mask, *uncond)
    levels = [multihost_utils.process_allgather(x, tiled=True) for x in levels]
    path = os.path.join(workdir, "samples", f"{stage.name}_step{step:07d}.png")
    samples.write_grid(path, levels)
    logging.info("Wrote %s", path)
