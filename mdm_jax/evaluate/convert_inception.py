"""python -m mdm_jax.evaluate.convert_inception: the FID Inception weights without PyTorch.

    python -m mdm_jax.evaluate.convert_inception \
        --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

Reads pytorch-fid's weights file (https://github.com/mseitzer/pytorch-fid/releases/download/
fid_weights/pt_inception-2015-12-05-6726825d.pth; reading a .pth needs PyTorch), checks
that it is the FID network (`inception.read_weights`: every tensor present with its shape,
nothing else) and writes the same tensors under the same names, float32, torch layout, as
.npz or .safetensors, which `inception.load_params` reads with numpy alone.
"""
import os

import numpy as np
from absl import app, flags, logging

from mdm_jax.evaluate import inception

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined only when it runs: tests import `convert`, and other
    commands' modules define flags of the same names."""
    flags.DEFINE_string("input", None, "The FID Inception weights: pt_inception-2015-12-05-"
                        "6726825d.pth (or a .npz/.safetensors of the same tensors).")
    flags.DEFINE_string("output", None, "The file to write: .npz or .safetensors.")
    flags.mark_flags_as_required(["input", "output"])

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    count = convert(FLAGS.input, FLAGS.output)
    logging.info("Wrote the %d FID Inception tensors of %s to %s.", count, FLAGS.input,
                 FLAGS.output)


if __name__ == "__main__":
    define_flags()
    app.run(main)
