"""The FID Inception weights without PyTorch (the command: python -m mdm_jax.convert_inception).

Reads pytorch-fid's weights file (https://github.com/mseitzer/pytorch-fid/releases/download/
fid_weights/pt_inception-2015-12-05-6726825d.pth; reading a .pth needs PyTorch), checks
that it is the FID network (`inception.read_weights`: every tensor present with its shape,
nothing else) and writes the same tensors under the same names, float32, torch layout, as
.npz or .safetensors, which `inception.load_params` reads with numpy alone.
"""
import os

import numpy as np

from mdm_jax.evaluation import inception

OUTPUT_SUFFIXES = (".npz", ".safetensors")


def convert(input_path, output_path):
    """Checks `input_path` and writes its tensors to `output_path`; returns their count."""
    suffix = os.path.splitext(output_path)[1]
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output={output_path}: use a .npz or .safetensors file name.")
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise ValueError("--output must differ from --input.")
    tensors = inception.read_weights(input_path)
    # Write beside the target, then rename: an interrupted run leaves no half file that
    # would later fail the strict check with a confusing message.
    partial = output_path + ".partial"
    if suffix == ".npz":
        with open(partial, "wb") as f:
            np.savez(f, **tensors)
    else:
        from safetensors.numpy import save_file
        save_file(tensors, partial)
    os.replace(partial, output_path)
    return len(tensors)
