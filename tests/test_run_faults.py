"""Faults a user meets: damaged checkpoints fall back to an intact one, a second run on a
locked workdir is refused, and metrics past the resumed checkpoint are dropped."""
import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.runs.layout import RunDir
from mdm_jax.runs.lock import WorkdirLock
from mdm_jax.runs.stages import Stage
from mdm_jax.training.metrics import MetricsLog

CONFIG = {"stage": {"name": "res32", "num_levels": 1}}


class Saved:
    """A stage directory with checkpoints at steps 1 and 2 of a small state."""

    def __init__(self, directory):
        self.directory = str(directory)
        checkpoints = checkpoints_lib.StageCheckpoints(self.directory, async_save=False)
        for step in (1, 2):
            checkpoints.save(step, self.state(step), _Config(CONFIG))
        checkpoints.close()

    @staticmethod
    def state(step):
        return _State({"unet": {"w": jnp.full((64, 64), float(step))}})

    def restore(self):
        checkpoints = checkpoints_lib.StageCheckpoints(self.directory)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            self.state(0)).params
        abstract = {"params": abstract}
        try:
            return checkpoints.restore_newest_intact(lambda: _State(abstract["params"]))
        finally:
            checkpoints.close()


class _Config:
    def __init__(self, d):
        self.d = d

    def to_json_best_effort(self):
        return json.dumps(self.d)


@flax.struct.dataclass
class _State:
    """A state as check_architecture reads it (state.params['unet'])."""
    params: dict


def truncate_data_files(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
             for f in fs if not f.startswith("_")]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(max(os.path.getsize(path) // 3, 1))


def delete_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


def truncate_metadata(step_dir):
    found = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
             if f == "_METADATA"]
    assert found
    for path in found:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [truncate_data_files, delete_state, truncate_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage, caplog):
    saved = Saved(tmp_path / "res32")
    damage(os.path.join(saved.directory, "2"))
    step, state = saved.restore()
    assert step == 1
    np.testing.assert_array_equal(state.params["unet"]["w"], 1.0)
    # Kept for inspection, out of Orbax's way, and said once.
    assert os.path.isdir(os.path.join(saved.directory, "2.damaged"))
    assert checkpoints_lib.latest_step(saved.directory) == 1
    warnings = [r for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "res32/2" in warnings[0].getMessage()
    assert len(warnings[0].getMessage()) < 600


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
    saved = Saved(tmp_path / "res32")
    for step in ("1", "2"):
        delete_state(os.path.join(saved.directory, step))
    with pytest.raises(RuntimeError, match=r"No checkpoint .* restores \(steps 2, 1.*mv ") as e:
        saved.restore()
    assert len(str(e.value).splitlines()) == 1
    # Left in place: nothing restored, so the fault might not be the files'.
    assert sorted(os.listdir(saved.directory)) == ["1", "2"]


def test_an_intact_newest_checkpoint_is_the_one_restored(tmp_path):
    step, state = Saved(tmp_path / "res32").restore()
    assert step == 2
    np.testing.assert_array_equal(state.params["unet"]["w"], 2.0)


def test_a_second_run_on_a_locked_workdir_is_refused(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    with WorkdirLock(run_dir):
        # Another live process holds it: this one (the test) is alive, from another pid's
        # view; a subprocess tries to take it.
        code = ("import sys; from mdm_jax.runs.layout import RunDir; "
                "from mdm_jax.runs.lock import WorkdirLock\n"
                f"with WorkdirLock(RunDir({str(run_dir.root)!r})): pass")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert result.returncode != 0
        assert "Another training run" in result.stderr and str(run_dir.lock) in result.stderr
    assert not run_dir.lock.exists()  # released on exit
    with WorkdirLock(run_dir):  # and free again
        assert run_dir.lock.exists()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket
    import time
    run_dir.lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                        "time": time.time()}))
    with WorkdirLock(run_dir):
        assert json.loads(run_dir.lock.read_text())["pid"] == os.getpid()


def test_metrics_past_the_resumed_checkpoint_are_dropped(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir(parents=True)
    # A run logged steps 10..50 of stage 2 (offset 100), saved at 20, then was killed.
    records = [{"step": 100, "loss": 1.0, "data/corrupt_image": 3}]
    records += [{"step": 100 + s, "loss": 0.5} for s in (10, 20, 30, 40, 50)]
    run_dir.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = Stage("res64", 1, _Steps(60), None, None, (), 64, 100)
    log = MetricsLog(run_dir)
    log.begin_stage(stage, 20)
    log.counters.add({"counters": {"corrupt_image": 2}})
    log.write(130, {"loss": 0.25})
    log.close()
    steps = [json.loads(line)["step"] for line in run_dir.metrics.read_text().splitlines()]
    assert steps == [100, 110, 120, 130]
    # The data counters continue the run's: 3 from stage 1 plus 2 in this stage.
    assert json.loads(run_dir.metrics.read_text().splitlines()[-1])["data/corrupt_image"] == 5


class _Steps:
    def __init__(self, steps):
        self.steps = steps
