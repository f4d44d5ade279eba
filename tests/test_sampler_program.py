"""benchmarks/sampler_program.py on this CPU: the demo video model's sampling loop
compiled for an H100 described without one (jax's CUDA plugin, from the test extra)."""
import json
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def test_the_text_gemms_leave_the_loop_body_when_the_text_is_processed_once():
    pytest.importorskip("jax_plugins.xla_cuda12",
                        reason="pip install -e '.[test]' (or '.[gpu-aot]') brings it")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sampler_program", "--config=configs/demo_video.py",
         "--card=h100", "--batch_size=2", "--steps=3", "--guidance=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    per_step, once = (json.loads(line) for line in result.stdout.splitlines()
                      if line.startswith("{"))
    assert (per_step["condition_once"], once["condition_once"]) == (False, True)
    # The small text encoder's tokens feed cross-attention: their projections run at
    # every step, inside the loop, unless they are made before it.
    assert per_step["loop_text_gemms"] == per_step["text_gemms"] > 0
    assert once["loop_text_gemms"] == 0 and once["text_gemms"] == per_step["text_gemms"]
    assert once["loop_gemms"] == per_step["loop_gemms"] - per_step["loop_text_gemms"]
