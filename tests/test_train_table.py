"""benchmarks/train_table.sh on the CPU: the presets compile side by side, then each is
measured alone from its filled compilation cache."""
import json
import os
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


PRESETS = ["configs/demo.py:smoke 4", "configs/demo.py:smoke 8 --config.model.dtype=bfloat16"]


def test_each_preset_is_measured_from_a_warm_cache():
    # One device, as the table's one card (the suite's XLA_FLAGS make eight).
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PRESETS": ";".join(PRESETS)}
    result = subprocess.run(["bash", "benchmarks/train_table.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["global_batch"] for line in lines] == [4, 8]
    # A preset's own flags follow the common ones, and each line names its preset.
    assert [line["preset"] for line in lines] == PRESETS
    assert [line["model_dtype"] for line in lines] == ["float32", "bfloat16"]
    cold = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--config=configs/demo.py:smoke",
         "--batch_size=4", "--steps=1", "--compile_cache_dir="],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert cold.returncode == 0, cold.stderr[-3000:]
    (cold_line,) = [json.loads(line) for line in cold.stdout.splitlines()
                    if line.startswith("{")]
    for line in lines:
        assert line["step_s"] > 0
        # Each step came from the cache its compile phase filled: loaded, not compiled.
        assert line["compile_s"] < cold_line["compile_s"] / 3, (line, cold_line)
    assert lines[0]["first_loss"] == pytest.approx(cold_line["first_loss"], rel=1e-6)
