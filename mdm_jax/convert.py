"""python -m mdm_jax.convert: a reference checkpoint -> a run directory `sample` loads.

    python -m mdm_jax.convert --reference_config=cc12m_256x256.yaml \
        --checkpoint=vis_model.pth --output=runs/mdm_256 \
        --text_encoder_dir=~/models/flan-t5-xl
    python -m mdm_jax.sample --checkpoint=runs/mdm_256 --prompt="a red bicycle"

.pth needs PyTorch (pip install 'mdm-jax[torch]'); .safetensors and .npz do not.
"""
from absl import app, flags, logging

from mdm_jax.reference import run_dir

flags.DEFINE_string("reference_config", None, "The reference's model yaml "
                    "(apple/ml-mdm configs/models/*.yaml).")
flags.DEFINE_string("checkpoint", None, "Its vision-model state dict: .pth, .pt, "
                    ".safetensors or .npz.")
flags.DEFINE_string("output", None, "The run directory to write (must not hold "
                    "checkpoints yet).")
flags.DEFINE_string("text_encoder_dir", "~/models/flan-t5-xl",
                    "The Hugging Face T5 directory the model was trained with "
                    "(flan-t5-xl for the released models); read at sampling time.")
flags.mark_flags_as_required(["reference_config", "checkpoint", "output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    directory = run_dir.write_run_dir(FLAGS.reference_config, FLAGS.checkpoint,
                                      FLAGS.output, FLAGS.text_encoder_dir)
    logging.info("Wrote %s; sample it with python -m mdm_jax.sample --checkpoint=%s",
                 directory, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
