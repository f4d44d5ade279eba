"""Test setup: eight fake CPU devices, fast compiles, float32 matmuls at full precision.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""
import os
import shutil

# Backend optimisation off: test programs are small and run a few times, so compiling at
# full optimisation costs far more than it saves.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import filelock  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# grain worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

PARITY_DIR = os.path.join(os.path.dirname(__file__), "data", "parity")


@pytest.fixture
def parity_dir():
    return PARITY_DIR


def made_once(tmp_path_factory, name, make):
    """A folder that make(path) fills once per test session: with pytest-xdist, the first
    worker to ask makes it while the others wait for it, instead of each making its own."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers' own temporary folders
    path, done = root / name, root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            make(str(path))
            done.touch()
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """tfds data sets of the tests' training runs; the smoke config's is built up front so
    that runs in parallel never build it at once."""
    from mdm_jax.data import sources
    from training_runs import smoke_config

    def build(path):
        data = smoke_config().data
        data.data_dir = path
        sources.build(data)
    return made_once(tmp_path_factory, "data", build)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, data_dir):
    """A demo.py:smoke run of 6 + 3 steps, logging every step, saving at the stage ends
    (what the tests that share it read)."""
    from training_runs import run_to_end, train_command
    return made_once(tmp_path_factory, "uninterrupted", lambda workdir: run_to_end(
        train_command(workdir, data_dir, "--config.checkpoint_every=10")))


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory):
    """Reference-format files of a small nested text model (tests/reference_model.py)."""
    pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")
    from reference_model import write_reference_model
    return write_reference_model(tmp_path_factory.mktemp("reference"))
