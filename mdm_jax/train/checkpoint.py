"""Orbax checkpoints of a training stage: train state, data iterator state and config.

One CheckpointManager per stage directory (workdir/checkpoints/<stage>). Saves are async
and atomic (Orbax writes a temporary folder and renames it when complete), the last N are
kept, and `restore_params` reads only params and EMA, for growth and sampling, through
a fresh manager as Orbax requires.
"""
import json
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

STATE, DATA, CONFIG = "state", "data", "config"


class StageCheckpoints:
    """The checkpoints of one stage; `data_iterator` may be None (no data state saved)."""

    def __init__(self, directory, keep=3, async_save=True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True),
            item_names=(STATE, DATA, CONFIG))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, config, data_iterator=None, force=False):
        items = {STATE: ocp.args.StandardSave(state),
                 CONFIG: ocp.args.JsonSave(json.loads(config.to_json_best_effort()))}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step, abstract_state, data_iterator=None):
        """The state at `step` onto the shardings in abstract_state; the iterator in place."""
        check_architecture(self.read_config(step), abstract_state, self.directory, step)
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None and self.has_data_position(step):
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def read_config(self, step):
        return read_config(self.directory, step)

    def has_data_position(self, step):
        """False for a stage's first checkpoint written by mdm_jax.grow or mdm_jax.convert:
        no data has been read yet."""
        return os.path.isdir(os.path.join(self.directory, str(step), DATA))

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def read_config(directory, step):
    """The config (a dict) saved with checkpoint `step` of a stage directory."""
    path = os.path.join(directory, str(step), CONFIG, "metadata")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint {directory}/{step} has no config item "
                                f"({path}); it was not written by mdm-jax.")
    with open(path) as f:
        return json.load(f)


def latest_step(directory):
    """The stage directory's newest complete checkpoint, or None. Read-only: a training
    run still writing there keeps its in-progress saves."""
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(directory,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    manager.close()
    return step


def saved_run_config(run_dir, stage=None):
    """The config a run was trained (or converted) with, from its checkpoints.

    run_dir holds checkpoints/<stage>/<step>; the config of the named stage's latest
    checkpoint, else of the stage with the most levels that has one. The training run's
    overrides are all in it; the stage record it was saved with is dropped.
    """
    root = os.path.join(os.path.abspath(os.path.expanduser(run_dir)), "checkpoints")
    names = [stage] if stage else (sorted(os.listdir(root)) if os.path.isdir(root) else [])
    found = []
    for name in names:
        step = latest_step(os.path.join(root, name))
        if step is not None:
            found.append(read_config(os.path.join(root, name), step))
    if not found:
        raise FileNotFoundError(
            f"No checkpoint{' of stage ' + stage if stage else ''} under {root}: point at a "
            "training run's workdir or a `python -m mdm_jax.convert` output.")
    saved = max(found, key=lambda c: (c.get("stage") or {}).get("num_levels", 0))
    saved.pop("stage", None)
    return ml_collections.ConfigDict(saved)


def check_architecture(saved_config, abstract_state, directory, step):
    """Names the mismatch when a checkpoint's stage or model isn't the one being restored."""
    stage = saved_config.get("stage") or {}
    want = abstract_state.params["unet"]
    depth = 1
    while "inner_unet" in want:
        want, depth = want["inner_unet"], depth + 1
    if stage.get("num_levels") != depth:
        raise ValueError(
            f"Checkpoint {directory}/{step} is from stage {stage.get('name')!r} with "
            f"{stage.get('num_levels')} level(s); the model being restored has {depth}. "
            "Restore it into its own stage, or grow it first (python -m mdm_jax.grow).")


def restore_params(directory, abstract_params, step=None):
    """Only {'params', 'ema_params'} of a stage checkpoint (latest step by default).

    abstract_params: {'params': tree, 'ema_params': tree} of ShapeDtypeStructs with
    shardings. Returns (restored dict, step).
    """
    directory = os.path.abspath(directory)
    manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA, CONFIG),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {directory}: train that stage first, or "
                                "point at a directory that holds numbered checkpoints.")
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract_params)
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(item=abstract_params, restore_args=restore_args,
                                      partial_restore=True)}))[STATE]
    manager.close()
    return restored, step
