"""The training entrypoint end to end, in subprocesses: resume, preemption, two processes.

Every run uses configs/demo.py:smoke (a few steps per stage, both stages, growth between
them) on 8 fake CPU devices, logging and checkpointing every step.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["--config.stages.res32.steps=6", "--config.stages.res64.steps=3"]


def train_command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "mdm_jax.train", "--config=configs/demo.py:smoke",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.log_every=1", "--config.checkpoint_every=1", *STEPS, *extra]


def env_with_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={count} "
                        "--xla_backend_optimization_level=0")
    return env


def start(command, env=None, log=None):
    return subprocess.Popen(command, cwd=ROOT, env=env or env_with_devices(8),
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def losses(workdir):
    """step -> loss from metrics.jsonl; a step logged twice (rerun after resume) keeps
    its last value."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out


def wait_for_step(workdir, step, process, timeout=600):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "training exited before reaching the step"
        if os.path.exists(path) and max(losses(workdir), default=0) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def run_to_end(command, env=None, timeout=900):
    result = subprocess.run(command, cwd=ROOT, env=env or env_with_devices(8),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_to_end(train_command(workdir, data_dir))
    return workdir


def test_full_run_trains_both_stages_and_writes_samples(uninterrupted):
    steps = losses(uninterrupted)
    assert sorted(steps) == list(range(1, 10))  # 6 steps at 32², then 3 at 64²
    for stage, last in (("res32", 6), ("res64", 3)):
        assert os.path.isdir(os.path.join(uninterrupted, "checkpoints", stage, str(last)))
        assert os.path.exists(os.path.join(uninterrupted, "samples",
                                           f"{stage}_step{last:07d}.png"))
    with open(os.path.join(uninterrupted, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert {"mse_level0", "mse_level1", "grad_norm", "images_per_s_per_chip",
            "learning_rate"} <= set(rows[-1])
    assert any(k.startswith("data/") for k in rows[-1])
    assert os.path.isdir(os.path.join(uninterrupted, "tensorboard"))


def test_resume_after_sigkill_is_bit_identical(tmp_path, data_dir, uninterrupted):
    workdir = str(tmp_path)
    process = start(train_command(workdir, data_dir))
    wait_for_step(workdir, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(losses(workdir))
    assert killed_at < 9
    run_to_end(train_command(workdir, data_dir))
    resumed, reference = losses(workdir), losses(uninterrupted)
    assert sorted(resumed) == sorted(reference)
    for step in range(killed_at + 1, 10):
        assert resumed[step] == reference[step], step  # bit-identical


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, data_dir):
    workdir = str(tmp_path)
    command = train_command(workdir, data_dir, "--config.stages.res32.steps=500",
                            "--config.checkpoint_every=100")
    process = start(command)
    wait_for_step(workdir, 2, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0
    last_logged = max(losses(workdir))
    checkpoints = os.listdir(os.path.join(workdir, "checkpoints", "res32"))
    steps = sorted(int(c) for c in checkpoints if c.isdigit())
    assert steps[-1] == last_logged < 500
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "res64"))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path, data_dir, uninterrupted):
    """Two jax.distributed processes with 4 CPU devices each: the same losses as 8 in one."""
    workdir = str(tmp_path)
    port = free_port()
    processes = [
        start(train_command(workdir, data_dir, f"--coordinator_address=localhost:{port}",
                            "--num_processes=2", f"--process_id={i}"),
              env=env_with_devices(4))
        for i in range(2)]
    for p in processes:
        assert p.wait(timeout=900) == 0
    two, one = losses(workdir), losses(uninterrupted)
    assert sorted(two) == sorted(one)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
