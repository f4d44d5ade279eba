"""XLA flags set by default for every entry point, before jax starts its backend.

Each default is added to XLA_FLAGS only when XLA_FLAGS does not already name that flag,
so `XLA_FLAGS=--xla_gpu_enable_triton_gemm=true python -m mdm_jax.train ...` overrides it.
Flags of other platforms are ignored by XLA (the CPU and TPU backends read none of these).
"""
import os

DEFAULTS = (
    # Dense layers on cuBLAS instead of autotuned Triton GEMM fusions: the 64² step
    # compiled 15 s faster and ran no slower on an H200 (docs/performance.md).
    "--xla_gpu_enable_triton_gemm=false",
)


def with_defaults(xla_flags, defaults=DEFAULTS):
    """xla_flags plus each default whose flag name it does not already set."""
    given = {flag.split("=")[0] for flag in xla_flags.split()}
    added = [flag for flag in defaults if flag.split("=")[0] not in given]
    return " ".join([xla_flags.strip()] + added).strip()


def apply_defaults():
    """Must run before the first jax call that starts a backend (jax.devices() etc.)."""
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
