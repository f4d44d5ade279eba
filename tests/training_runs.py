"""Training runs in subprocesses, shared by the loop and sampling tests.

Runs use configs/demo.py:smoke on fake CPU devices and share a persistent compilation
cache, so a later run doesn't compile again what an earlier one did.
"""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["--config.stages.res32.steps=6", "--config.stages.res64.steps=3"]
# For runs that check losses or checkpoints only: no sample grids to compile and draw.
NO_GRIDS = "--config.sample.num_samples=0"
COMPILE_CACHE = os.path.join(ROOT, ".pytest_cache", "jax_compile_cache")


def load_config(spec_string):
    """A config as the training command loads it: 'configs/NAME.py[:preset]'."""
    import importlib.util
    path, _, preset = spec_string.partition(":")
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None)


def smoke_config():
    """configs/demo.py:smoke, loaded as the training command loads it."""
    return load_config("configs/demo.py:smoke")


def train_command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "mdm_jax.train", "--config=configs/demo.py:smoke",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.log_every=1", "--config.checkpoint_every=1",
            f"--config.compile_cache_dir={COMPILE_CACHE}", *STEPS, *extra]


def env_with_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={count} "
                        "--xla_backend_optimization_level=0")
    env["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def start(command, env=None, log=None):
    return subprocess.Popen(command, cwd=ROOT, env=env or env_with_devices(2),
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
    result = subprocess.run(command, cwd=ROOT, env=env or env_with_devices(2),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
