"""python -m mdm_jax.compile_for: the demo's 32² step compiled for a 4-chip TPU v5e slice on
this CPU (libtpu from the test extra describes the slice; no TPU is needed)."""
import json
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def compile_for(*flags):
    """(the command's result, its JSON report) for the demo's res32 step on a v5e-2x2."""
    pytest.importorskip("libtpu", reason="pip install -e '.[test]' (or '.[tpu]') brings it")
    result = subprocess.run(
        [sys.executable, "-m", "mdm_jax.compile_for", "--config=configs/demo.py:smoke",
         "--stage=res32", "--topology=v5e:2x2", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(next(line for line in result.stdout.splitlines()
                             if line.startswith("{")))
    return result, report


def test_a_step_compiles_for_a_tpu_slice_and_a_chip_too_small_is_named():
    # One compile for both: the report, then the refusal for a chip of 1 MiB.
    result, report = compile_for("--hbm_gib=0.0009765625")
    assert report["device_kind"] == "TPU v5 lite" and report["chips"] == 4
    assert report["mesh"] == {"data": 4, "fsdp": 1} and report["stage"] == "res32"
    # Data parallel: the gradients are summed across the chips.
    assert report["collectives"]["all-reduce"] >= 1
    assert report["flops_per_chip"] > 0
    assert report["per_chip_memory_bytes"] > report["per_chip_arguments_bytes"] > 0
    assert result.returncode == 1
    assert "more than its 0.00 GiB" in result.stderr
    assert "gradient_accumulation_steps" in result.stderr
    assert report["fits"] is False


def test_a_step_the_tpu_compiler_cannot_fit_is_named_with_its_temporaries():
    # 65,536 images of 32² a chip: XLA stops compiling once its temporaries exceed 16 GiB.
    result, report = compile_for("--batch_size=262144")
    assert report["fits"] is False and report["per_chip_memory_bytes"] > 16 * 2**30
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("The step needs at least") and "remat" in last
