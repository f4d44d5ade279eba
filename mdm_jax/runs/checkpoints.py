"""Orbax checkpoints of a training stage: train state, data iterator state and config.

One CheckpointManager per stage directory (RunDir.stage_checkpoints: <workdir>/checkpoints/
<stage>), which may be a local folder or a URL (an etils.epath.Path). Saves are async
and atomic (Orbax writes a temporary folder and renames it when complete), the last N are
kept, and `restore_params` reads only params and EMA, for growth and sampling, through
a fresh manager as Orbax requires.
"""
import json

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mdm_jax.runs.layout import RunDir

STATE, DATA, CONFIG = "state", "data", "config"


class StageCheckpoints:
    """The checkpoints of one stage; `data_iterator` may be None (no data state saved)."""

    def __init__(self, directory, keep=3, async_save=True):
        self.directory = RunDir.resolve(directory)
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
        return self._restore_items(step, abstract_state, data_iterator)

    def _restore_items(self, step, abstract_state, data_iterator):
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None and self.has_data_position(step):
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def read_config(self, step):
        return read_config(self.directory, step)

    def restore_newest_intact(self, make_abstract_state, data_iterator=None,
                              check_saved=None):
        """(step, state) of the newest checkpoint that restores, or (None, None) if there
        is none. A damaged one (truncated files, a missing item, torn metadata) is
        moved aside (<step>.damaged) with one warning naming it, so a run killed
        mid-save, or a disk that lost files, continues from the checkpoint before.

        check_saved(saved_config, step) may refuse a checkpoint for another reason (a
        different stage or worker count): that error is raised, not passed over.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                saved = self.read_config(step)
            except (OSError, ValueError) as error:
                damaged.append((step, error))
                continue
            if check_saved is not None:
                check_saved(saved, step)
            abstract = make_abstract_state()
            check_architecture(saved, abstract, self.directory, step)
            try:
                state = self._restore_items(step, abstract, data_iterator)
            except Exception as error:  # noqa: BLE001 (Orbax and tensorstore raise many kinds)
                damaged.append((step, error))
                continue
            self._set_aside(damaged, step)
            return step, state
        if damaged:
            # Nothing restored, so the fault may be ours rather than the files': they are
            # left in place, and the message says how to set them aside.
            steps = ", ".join(str(s) for s, _ in damaged)
            raise RuntimeError(
                f"No checkpoint in {self.directory} restores (steps {steps}; newest: "
                f"{_first_line(damaged[0][1])}). If they are damaged, move them aside (mv "
                f"{self.directory}/<step> {self.directory}/<step>.damaged) to start the "
                "stage afresh, or put back a good copy of the folder.")
        return None, None

    def has_data_position(self, step):
        """False for a stage's first checkpoint written by mdm_jax.grow or mdm_jax.convert:
        no data has been read yet."""
        return (self.directory / str(step) / DATA).is_dir()

    def _set_aside(self, damaged, resumed_step):
        """Renames checkpoints newer than one that restored, which failed, to
        <step>.damaged (kept for inspection, ignored by Orbax), so the steps they held can
        be saved again; one warning each."""
        for step, error in damaged:
            target = self.directory / f"{step}.damaged"
            (self.directory / str(step)).rename(target)
            logging.warning("Checkpoint %s/%d is damaged (%s); moved to %s, resuming from "
                            "step %d.",
                            self.directory, step, _first_line(error), target, resumed_step)
        if damaged:
            self.manager.reload()

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        """Waits for a save in flight, then releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _first_line(error, limit=300):
    """An error's message cut to one short line (tensorstore's can be huge)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:limit] if text else ''}"


def read_config(directory, step):
    """The config (a dict) saved with checkpoint `step` of a stage directory."""
    path = RunDir.resolve(directory) / str(step) / CONFIG / "metadata"
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {directory}/{step} has no config item "
                                f"({path}); it was not written by mdm-jax.")
    return json.loads(path.read_text())


def latest_step(directory):
    """The stage directory's newest complete checkpoint, or None. Read-only: a training
    run still writing there keeps its in-progress saves. Orbax names a finished
    checkpoint by its step alone (in-progress ones carry a temporary suffix)."""
    directory = RunDir.resolve(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None


def saved_run_config(run_dir, stage=None):
    """The config a run was trained (or converted) with, from its checkpoints.

    run_dir holds checkpoints/<stage>/<step>; the config of the named stage's latest
    checkpoint, else of the stage with the most levels that has one. The training run's
    overrides are all in it; the stage record it was saved with is dropped.
    """
    root = RunDir(run_dir).checkpoints
    names = [stage] if stage else (sorted(p.name for p in root.iterdir())
                                   if root.is_dir() else [])
    found = []
    for name in names:
        step = latest_step(root / name)
        if step is not None:
            found.append(read_config(root / name, step))
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
    directory = RunDir.resolve(directory)
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
