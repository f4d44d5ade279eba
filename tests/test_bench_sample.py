"""benchmarks/bench_sample.py on the CPU: a JSON line per setting, and with --profile_dir
a trace of one call and its compiled program (the whole sampling loop in one program)."""
import json
import os
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def test_sampling_benchmark_writes_a_line_a_trace_and_the_program(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_sample", "--config=configs/demo.py",
         "--batch_size=2", "--steps_list=3", "--guidance_list=1", "--repeats=1",
         f"--profile_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert line["steps"] == 3 and line["batch"] == 2 and line["seconds_per_image"] > 0
    setting = tmp_path / "steps_3_guidance_1"
    program = (setting / "sample.hlo.txt").read_text()
    # The three steps run as one loop inside the program (the RNG's loops run 5 times).
    assert program.count('"known_trip_count":{"n":"3"}') == 1
    assert list(setting.glob("**/*.trace.json.gz")), list(setting.rglob("*"))
