"""Starting a stage from a checkpoint of the stage before it (progressive growth).

A trained lower-resolution model becomes the inner UNet of the next stage's model. The
new outer level starts fresh; its adapters and output conv are zero-initialised, so right
after growing, the lower-level outputs equal the old model's exactly. Every old parameter
and EMA value is copied unchanged into the `inner_unet` subtree; a trainable text encoder
is kept as it was.

`grown_state` is the one place this happens: the training loop calls it when a stage has
no checkpoint yet, and `write_grown_checkpoint` (python -m mdm_jax.grow) saves its result
as step 0 of a new run. `state_from_image_run` starts a video stage from an image model
instead: its levels fill the video model's spatial levels and innermost UNet
(mdm_jax.models.inflate), the temporal layers start fresh.
"""
import flax
import flax.linen as nn
from absl import logging

from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.models import inflate
from mdm_jax.parallel import sharding
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.layout import RunDir
from mdm_jax.runs.stages import (
    find_stage,
    fresh_params,
    plan_stages,
    sharded_fresh_params,
    stage_checkpoint_config,
)


def _shapes(tree):
    flat = flax.traverse_util.flatten_dict(nn.unbox(tree), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_inner_matches(old_unet, new_unet_boxed):
    """Fails, naming the first mismatch, unless old_unet fits new_unet['inner_unet']."""
    if "inner_unet" not in new_unet_boxed:
        raise ValueError("The new stage's model has no inner UNet to grow into: its stage "
                         "must have one more level than the checkpoint's.")
    want, got = _shapes(new_unet_boxed["inner_unet"]), _shapes(old_unet)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ValueError(
                f"The lower-stage checkpoint does not fit the new model's inner UNet at "
                f"{key!r}: checkpoint {got.get(key)}, model {want.get(key)}. Is the config's "
                "inner level the architecture that stage was trained with?")


def insert_inner(new_unet, old_unet):
    """new_unet (unboxed) with its inner_unet subtree replaced by old_unet."""
    return {**new_unet, "inner_unet": old_unet}


def previous_params(directory, previous, text, mesh, rules, seed):
    """Params and EMA of a checkpoint of stage `previous` in `directory` (its latest step),
    sharded onto `mesh`. Fails naming the mismatch if it is another stage's checkpoint."""
    step = checkpoints_lib.latest_step(directory)
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {directory}: train stage {previous.name} "
                                "first.")
    saved = checkpoints_lib.read_config(directory, step).get("stage") or {}
    if saved.get("num_levels") != previous.config.num_levels:
        raise ValueError(
            f"{directory} holds a checkpoint of stage {saved.get('name')!r} with "
            f"{saved.get('num_levels')} level(s); growing into this stage needs one with "
            f"{previous.config.num_levels} (stage {previous.name}).")

    def make_boxed():
        p = fresh_params(previous, text, seed)
        return {"params": p, "ema_params": p}
    target = sharding.abstract_with_shardings(make_boxed, mesh, rules)
    restored, _ = checkpoints_lib.restore_params(directory, target, step)
    return restored["params"], restored["ema_params"]


def grown_state(config, stages, stage, text, optimizer, mesh, rules, directory):
    """(state, shardings) of `stage` grown from the previous stage's checkpoint in
    `directory`: old params and EMA in the inner UNet, a fresh optimizer."""
    if stage.index == 0:
        raise ValueError(f"Stage {stage.name!r} is the config's first: nothing to grow from.")
    previous = stages[stage.index - 1]
    old_params, old_ema = previous_params(directory, previous, text, mesh, rules, config.seed)

    abstract, fresh = sharded_fresh_params(stage, text, config.seed, mesh, rules)
    check_inner_matches(old_params["unet"], abstract["unet"])

    def grown(old):
        return {**fresh, **old, "unet": insert_inner(fresh["unet"], old["unet"])}
    logging.info("Stage %s: grown from %s.", stage.name, directory)
    return state_lib.create_state(abstract, grown(old_params), grown(old_ema), optimizer,
                                  mesh, rules)


def latest_stage_checkpoint(run_dir):
    """(stage, directory) of a run's stage with the most levels that has a checkpoint,
    planned from the config saved with it."""
    run_config = checkpoints_lib.saved_run_config(run_dir)
    for stage in reversed(plan_stages(run_config)):
        directory = RunDir(run_dir).stage_checkpoints(stage.name)
        if checkpoints_lib.latest_step(directory) is not None:
            return stage, directory
    raise FileNotFoundError(f"No stage checkpoint under {run_dir}/checkpoints.")


def state_from_image_run(config, stage, text, optimizer, mesh, rules, image_run):
    """(state, shardings) of video `stage` with the 2D layers (params and EMA) of the
    image run's latest stage checkpoint, a fresh optimizer."""
    if not stage.model_config.get("num_frames"):
        raise ValueError(f"Stage {stage.name!r} is not a video stage (its top level has one "
                         "frame): start it from an image run with --from_checkpoint.")
    image_stage, directory = latest_stage_checkpoint(image_run)
    if image_stage.model_config.get("num_frames"):
        raise ValueError(f"{directory} is a video stage's checkpoint: --from_image_run takes "
                         "an image model's run (or grow a video stage with --from_checkpoint).")
    old_params, old_ema = previous_params(directory, image_stage, text, mesh, rules,
                                          config.seed)
    abstract, fresh = sharded_fresh_params(stage, text, config.seed, mesh, rules)

    def inflated(old):
        unet = inflate.image_to_video_params(fresh["unet"], stage.model_config, old["unet"],
                                             image_stage.model_config)
        return {**fresh, **old, "unet": unet}
    logging.info("Stage %s: its 2D layers from %s.", stage.name, directory)
    return state_lib.create_state(abstract, inflated(old_params), inflated(old_ema),
                                  optimizer, mesh, rules)


def write_grown_checkpoint(config, stage_name, from_checkpoint, workdir, from_image_run=None):
    """Writes `stage_name` grown from the stage directory `from_checkpoint` (or, for a
    video stage, made from the image run `from_image_run`) as step 0 in workdir (python
    -m mdm_jax.grow); returns the new stage's checkpoint directory."""
    stages = plan_stages(config)
    stage = find_stage(stages, stage_name)
    directory = RunDir(workdir).stage_checkpoints(stage.name)
    if checkpoints_lib.latest_step(directory) is not None:
        raise FileExistsError(f"{directory} already has checkpoints; grow into a new workdir.")
    mesh, rules = sharding.mesh_and_rules(config)
    text = TextConditioning.create(config, mesh, rules)
    st = stage.config
    optimizer = state_lib.make_optimizer(config.optimizer, st.learning_rate, st.warmup_steps)
    if from_image_run:
        state, _ = state_from_image_run(config, stage, text, optimizer, mesh, rules,
                                        from_image_run)
    else:
        state, _ = grown_state(config, stages, stage, text, optimizer, mesh, rules,
                               RunDir.resolve(from_checkpoint))
    checkpoints = checkpoints_lib.StageCheckpoints(directory)
    checkpoints.save(0, state, stage_checkpoint_config(config, stage))
    checkpoints.close()
    return directory
