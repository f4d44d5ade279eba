"""benchmarks/bench_scaling.py on fake CPU devices: one process driving 2 devices and 2
processes of one device each (jax.distributed on localhost) run the same first step."""
import json
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def test_one_process_per_device_matches_one_process_for_all():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scaling", "--config=configs/demo.py:smoke",
         "--per_device_batch=4", "--devices=2", "--fsdp=on", "--launch=both",
         "--platform=cpu", "--", "--steps=1", "--compile_cache_dir="],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["launch"], r["chips"], r["processes"], r["global_batch"]) for r in lines] == [
        ("single", 2, 1, 8), ("per_device", 2, 2, 8)]
    assert all(r["fsdp"] and r["images_per_s_per_chip"] > 0 for r in lines)
    # No one-device run here, so no scaling to report.
    assert [r["scaling"] for r in lines] == [None, None]
    assert lines[0]["first_loss"] == pytest.approx(lines[1]["first_loss"], rel=1e-6)
