"""Converts the FID Inception weights to a file read without PyTorch.

    python -m mdm_jax.convert_inception \
        --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

Details in mdm_jax/evaluation/convert_inception.py.
"""
from absl import app, flags, logging

from mdm_jax.evaluation import convert_inception

flags.DEFINE_string("input", None, "The FID Inception weights: pt_inception-2015-12-05-"
                    "6726825d.pth (or a .npz/.safetensors of the same tensors).")
flags.DEFINE_string("output", None, "The file to write: .npz or .safetensors.")
flags.mark_flags_as_required(["input", "output"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    count = convert_inception.convert(FLAGS.input, FLAGS.output)
    logging.info("Wrote the %d FID Inception tensors of %s to %s.", count, FLAGS.input,
                 FLAGS.output)


if __name__ == "__main__":
    app.run(main)
