"""Test setup: eight fake CPU devices, fast compiles, float32 matmuls at full precision.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""
import os

# Backend optimisation off: test programs are small and run a few times, so compiling at
# full optimisation costs far more than it saves.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The smoke config's shapes data, built by the first training run that needs it."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, data_dir):
    """A demo.py:smoke run of 6 + 3 steps, logging and checkpointing every step."""
    from training_runs import run_to_end, train_command
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_to_end(train_command(workdir, data_dir))
    return workdir


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory):
    """Reference-format files of a small nested text model (tests/reference_model.py)."""
    pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")
    from reference_model import write_reference_model
    return write_reference_model(tmp_path_factory.mktemp("reference"))
