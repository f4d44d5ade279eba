"""python -m mdm_jax.compile_for: the demo's 32² step compiled for a 4-chip TPU v5e slice and
for a host of two H100s on this CPU (libtpu and jax's CUDA plugin, from the test extra,
describe them; no TPU or GPU is needed)."""
import json
import os
import subprocess
import sys

import pytest

from training_runs import ROOT

pytestmark = pytest.mark.slow


def compile_for(*flags, topology="v5e:2x2", env=None):
    """(the command's result, its JSON report) for the demo's res32 step on a v5e-2x2."""
    if topology.startswith("v"):
        pytest.importorskip("libtpu", reason="pip install -e '.[test]' (or '.[tpu]') brings it")
    result = subprocess.run(
        [sys.executable, "-m", "mdm_jax.compile_for", "--config=configs/demo.py:smoke",
         "--stage=res32", f"--topology={topology}", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=None if env is None else {**os.environ, **env})
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


def test_a_step_compiles_for_two_h100s_sharded_fully_within_the_allocators_share(tmp_path):
    pytest.importorskip("jax_plugins.xla_cuda12",
                        reason="pip install -e '.[test]' (or '.[gpu-aot]') brings it")
    hlo = tmp_path / "step.hlo.txt"
    # XLA's scoped timers on, for benchmarks.compile_timers.
    timers = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "gpu_compiler=1,"
              "hlo_pass_pipeline=1,compile_module_to_llvm_ir=1,nvptx_compiler=1"}
    result, report = compile_for("--config.mesh.data=1", "--config.mesh.fsdp=2",
                                 f"--save_hlo={hlo}", topology="h100:2", env=timers)
    assert result.returncode == 0, result.stderr[-2000:]
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3" and report["chips"] == 2
    assert report["mesh"] == {"data": 1, "fsdp": 2} and report["fits"] is True
    # FSDP: each card holds half the state and gathers the other half's params.
    assert report["collectives"]["all-gather"] >= 1
    assert report["collectives"]["reduce-scatter"] + report["collectives"]["all-reduce"] >= 1
    # The limit is jax's allocator's default share (0.75) of the card's 81,559 MiB.
    assert report["hbm_bytes"] == int(0.75 * 81_559 * 2**20)
    assert report["per_chip_memory_bytes"] > report["per_chip_arguments_bytes"] > 0
    # The program is the GPU's: its convolutions are cuDNN's. And it is the one the
    # trainer's process compiles, under mdm_jax's default XLA flags: its dense layers
    # are cuBLAS GEMMs, not Triton GEMM fusions (parallel/xla_flags.py).
    text = hlo.read_text()
    assert 'custom_call_target="__cudnn$conv' in text
    assert "__cublas$lt$matmul" in text and "__triton_nested_gemm_fusion" not in text

    # Its own process: benchmarks' modules define absl flags of the same names.
    log = tmp_path / "compile.log"
    log.write_text(result.stderr)
    summary = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_timers", f"--log={log}", "--top=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    timed = json.loads(summary.stdout)
    assert timed["hlo_passes_s"] > 0 and timed["backend_s"] > 0
    assert timed["ptxas_thread_s"] > 0 and "priority-fusion" in timed["hlo_passes_top_s"]
    assert sum(timed["hlo_passes_top_s"].values()) <= timed["hlo_passes_s"] * 1.05


def test_gpu_topology_names_and_the_allocators_share(monkeypatch):
    from mdm_jax.training import gpu_targets
    h100, h200 = gpu_targets.CARDS["h100"], gpu_targets.CARDS["h200"]
    assert gpu_targets.parse("h200") == (h200, 1, 1)
    assert gpu_targets.parse("H100:8") == (h100, 1, 8)
    assert gpu_targets.parse("h100:2x8") == (h100, 2, 8)
    assert gpu_targets.parse("v5p:4x4x4") is None and gpu_targets.parse("h100:") is None
    monkeypatch.delenv("XLA_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert gpu_targets.usable_bytes(h200.name) == int(0.9 * 143_771 * 2**20)
    assert gpu_targets.usable_bytes("NVIDIA A100-SXM4-80GB") is None
