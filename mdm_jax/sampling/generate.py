"""Sampling a trained or converted run: the library behind `python -m mdm_jax.sample`,
the notebook and evaluation.

Loads a stage's EMA params onto the config's mesh, encodes the conditioning as training's
sample grids do, and runs DDPM, DDIM or DPM-Solver++(2M) as one jitted program per batch
shape, the batch split over every device. Batches have a fixed size (the last is padded
and trimmed), so one compile serves all of them.
"""
import dataclasses
import json

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.models import build_model
from mdm_jax.parallel import sharding
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.runs.layout import RunDir
from mdm_jax.runs.stages import find_stage, fresh_params, plan_stages, top_level_shape
from mdm_jax.sampling import images, sampler, video

SAMPLERS = sampler.SAMPLERS


def choose_stage(config, run_dir, name=None):
    """(stage, checkpoint directory, step): the named stage, else the config's last stage
    that has checkpoints in run_dir."""
    stages = plan_stages(config)
    if name is not None:
        stages = [find_stage(stages, name)]
    for stage in reversed(stages):
        directory = RunDir(run_dir).stage_checkpoints(stage.name)
        step = checkpoints_lib.latest_step(directory)
        if step is not None:
            return stage, directory, step
    raise FileNotFoundError(
        f"No checkpoint of stage(s) {[s.name for s in stages]} under {run_dir}/checkpoints: "
        "point --checkpoint at a training run's workdir or a converted model.")


# Settings that change how the function is computed, not which: free to differ from
# training's (e.g. bf16 and cuDNN attention on a GPU for a model trained elsewhere).
EXECUTION_SETTINGS = {"model": ("dtype", "attention_impl"), "diffusion": ("threshold",)}


def check_saved_config(config, directory, step):
    """Refuses a checkpoint trained with another model or diffusion process, naming the
    keys: the params would not fit, or would be sampled with the wrong schedule."""
    saved = checkpoints_lib.read_config(directory, step)
    for section in ("model", "diffusion"):
        ours = json.loads(config[section].to_json_best_effort())
        theirs = saved.get(section, {})
        differ = sorted(k for k in set(ours) | set(theirs)
                        if k not in EXECUTION_SETTINGS[section]
                        and ours.get(k) != theirs.get(k))
        if differ:
            raise ValueError(
                f"{directory}/{step} was trained with other {section} settings ({differ}): "
                f"pass the --config.{section}.* overrides the training run used.")


def load_ema_params(config, stage, directory, step, text, mesh, rules):
    """The stage's EMA params ({'unet', and a trainable text encoder}) sharded on mesh."""
    target = sharding.abstract_with_shardings(
        lambda: {"ema_params": fresh_params(stage, text, config.seed)}, mesh, rules)
    restored, _ = checkpoints_lib.restore_params(directory, target, step)
    return restored["ema_params"]


def conditioning_list(model_config, text_kind, prompts, labels):
    """The per-sample conditioning list (prompts or labels), checked against the model."""
    if text_kind != "none":
        if labels or not prompts:
            raise ValueError("This model is text-conditioned: pass --prompt or --prompts.")
        return list(prompts)
    if model_config.num_classes > 0:
        if prompts or not labels:
            raise ValueError("This model is class-conditional: pass --labels=0,1,...")
        bad = [c for c in labels if not 0 <= c < model_config.num_classes]
        if bad:
            raise ValueError(f"Labels {bad} are outside [0, {model_config.num_classes}).")
        return list(labels)
    if prompts or labels:
        raise ValueError("This model is unconditional: drop --prompt(s)/--labels and give "
                         "--num_samples.")
    return []


@dataclasses.dataclass
class Options:
    """How to sample; None takes the config's sample.<same name> (or its default)."""
    stage: str = None
    prompts: tuple = ()
    labels: tuple = ()
    num_samples: int = None       # default: one per prompt or label (cycled if more)
    num_steps: int = None
    sampler: str = None
    eta: float = None             # DDIM only
    guidance: float = None
    negative_prompt: str = ""
    threshold: str = None         # default: the config's diffusion.threshold
    seed: int = 0
    batch_size: int = 8


SAMPLE_DEFAULTS = ("num_steps", "sampler", "eta", "guidance")


def with_config_defaults(options, config):
    """options with its unset sampling settings taken from config.sample."""
    return dataclasses.replace(options, **{
        key: config.sample[key] for key in SAMPLE_DEFAULTS if getattr(options, key) is None})


def generate(config, run_dir, output, options):
    """Samples and writes output/NNNNN.png (highest level) and output/grid.png (every
    level side by side, a row per sample); returns the PNG paths of the samples. For a
    video model: output/NNNNN.mp4, .gif and _levels.png (sampling/video.py)."""
    levels, _ = sample_checkpoint(config, run_dir, options)
    if levels[0].ndim == 5:  # clips: MP4s, GIFs and frame strips
        return video.write_clips(output, levels)
    return images.write_images(output, levels)


def sample_checkpoint(config, run_dir, options):
    """(levels, conditions): every level's samples [N, h, w, C] in [-1, 1] (highest
    first, numpy) and the prompt or label of each sample ([] if unconditional)."""
    o = options = with_config_defaults(options, config)
    if o.eta and o.sampler != "ddim":
        raise ValueError(f"--eta applies to --sampler=ddim only (got --sampler={o.sampler}).")
    stage, directory, step = choose_stage(config, run_dir, o.stage)
    check_saved_config(config, directory, step)
    conditions = conditioning_list(stage.model_config, config.text.kind, o.prompts, o.labels)
    n = o.num_samples or len(conditions)
    if n < 1:
        raise ValueError("Nothing to sample: give --num_samples for an unconditional model.")
    if conditions:
        conditions = [conditions[i % len(conditions)] for i in range(n)]
    guidance = o.guidance
    if guidance != 1 and not conditions:
        raise ValueError("Guidance needs a conditional model: pass --guidance=1.")

    mesh, rules = sharding.mesh_and_rules(config)
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if o.batch_size % split:
        raise ValueError(f"--batch_size={o.batch_size} must be a multiple of the {split} "
                         "devices the batch is split over.")
    text = TextConditioning.create(config, mesh, rules)
    params = load_ema_params(config, stage, directory, step, text, mesh, rules)
    levels = sample_levels(stage, params, text, mesh, conditions, n, o, guidance)
    return levels, conditions


def stage_sampler(stage, options, guidance, mesh):
    """The jitted sampler (sampler.make_sampler) of a stage for these options."""
    o = options
    diffusion_config = stage.diffusion if o.threshold is None else dataclasses.replace(
        stage.diffusion, threshold=o.threshold)
    return sampler.make_sampler(build_model(stage.model_config), diffusion_config,
                                stage.scales, top_level_shape(stage, o.batch_size),
                                sampler=o.sampler,
                                num_steps=o.num_steps, eta=o.eta, guidance_scale=guidance,
                                mesh=mesh)


def sample_levels(stage, params, text, mesh, conditions, n, options, guidance, run=None):
    """n samples of a stage's model with its (EMA) params {'unet', ...} on mesh, in
    batches of options.batch_size split over the mesh: every level, numpy, in [-1, 1].

    conditions: n prompts or labels, or [] for an unconditional model. Each batch's key is
    fold_in(key(options.seed), batch index), so the same seed gives the same samples.
    run: stage_sampler's result, for callers that sample again and again (no recompiles).
    """
    o = options
    run = run or stage_sampler(stage, options, guidance, mesh)
    batch_sharding = sharding.batch_sharding(mesh, 1)

    def put(x):
        return None if x is None else jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))

    key = jax.random.key(o.seed)
    levels = []
    for start in tqdm.trange(0, n, o.batch_size, desc="sampling", unit="batch", leave=False,
                             disable=jax.process_index() != 0 or n <= o.batch_size):
        # The last batch repeats its final entry up to the fixed size; the extra rows go.
        chunk = conditions[start:start + o.batch_size]
        chunk = chunk + chunk[-1:] * (o.batch_size - len(chunk))
        labels = lm = mask = uncond_lm = uncond_mask = None
        if text.config.kind != "none":
            lm, mask = text.encode_prompts(params, chunk)
            if guidance != 1:
                uncond_lm, uncond_mask = text.encode_prompts(
                    params, [o.negative_prompt] * len(chunk))
        elif chunk:
            labels = jax.device_put(np.asarray(chunk, np.int32), batch_sharding)
        out = run(params["unet"], jax.random.fold_in(key, start // o.batch_size), labels,
                  put(lm), put(mask), put(uncond_lm), put(uncond_mask))
        keep = min(o.batch_size, n - start)
        levels.append([np.asarray(multihost_utils.process_allgather(x, tiled=True))[:keep]
                       for x in out])
    return [np.concatenate(level) for level in zip(*levels)]
