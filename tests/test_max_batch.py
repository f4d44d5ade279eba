"""benchmarks/max_batch.py on this CPU: the demo's step compiled for an H100 described
without one (the gpu-aot packages of the test extra), at a memory share small enough
that its batches are a few images."""
import json
import os
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def test_the_largest_batch_fits_each_card_and_one_more_would_not():
    pytest.importorskip("jax_plugins.xla_cuda12",
                        reason="pip install -e '.[test]' (or '.[gpu-aot]') brings it")
    # 0.078 % of the cards: about 62 MiB of an H100 and 110 MiB of an H200, so the
    # largest batches are near the probes (compiled once each, a compile is ~40 s).
    env = {**os.environ, "XLA_CLIENT_MEM_FRACTION": "0.00078"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.max_batch", "--config=configs/demo.py:smoke",
         "--card=h100", "--probe_batches=2,4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    probes = {p["batch"]: p["memory_gib"] for p in lines if p["benchmark"] == "max_batch_probe"}
    found = {r["card"]: r for r in lines if r["benchmark"] == "max_batch"}
    assert set(found) == {"80 GB (H100)", "141 GB (H200)"}
    assert probes[4] > probes[2] > 0
    for r in found.values():
        assert r["measured_on"] == "NVIDIA H100 80GB HBM3" and r["memory_share"] == 0.00078
        assert r["max_batch"] >= 1
        # The batch it names was compiled and fits; one more was compiled and does not.
        assert probes[r["max_batch"]] == r["memory_gib_at_max"] <= r["limit_gib"]
        assert probes[r["max_batch"] + 1] > r["limit_gib"]
    assert found["141 GB (H200)"]["max_batch"] > found["80 GB (H100)"]["max_batch"]
