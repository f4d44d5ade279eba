"""mdm-jax: Matryoshka Diffusion Models in JAX/Flax."""
import os

# jax's CUDA plugin (the gpu-aot and test extras) on a machine without an NVIDIA driver:
# its check of the driver's CUDA version can only fail, printing a traceback before jax
# falls back to the CPU. Skipped there; the plugin still describes cards for compiling
# ahead of time (mdm_jax/training/gpu_targets.py).
if not os.path.exists("/proc/driver/nvidia"):
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
