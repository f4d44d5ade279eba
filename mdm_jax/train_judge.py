"""Trains the shapes judge: python -m mdm_jax.train_judge --output=judge.npz

    python -m mdm_jax.train_judge --output=mdm_jax/evaluation/shapes_judge.npz

The package ships the result (mdm_jax/evaluation/shapes_judge.npz), trained on one H200
in about 2 minutes, rendering included; on a 2-core CPU it would take hours.
"""
from absl import app, flags

from mdm_jax.evaluation import judge as judge_lib
from mdm_jax.evaluation import train_judge

flags.DEFINE_string("output", None, "Where the judge checkpoint (.npz) goes.")
flags.DEFINE_integer("num_train", 50_000, "Rendered training scenes.")
flags.DEFINE_integer("num_held_out", 2_000, "Held-out scenes the accuracy is measured on.")
flags.DEFINE_integer("steps", 8_000, "Training steps.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (cosine decay).")
flags.DEFINE_integer("seed", 0, "Initialisation and batch-order seed.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.output:
        raise app.UsageError("--output=PATH.npz is required.")
    params, accuracy = train_judge.train(FLAGS.num_train, FLAGS.num_held_out, FLAGS.steps,
                                         FLAGS.batch_size, FLAGS.learning_rate, FLAGS.seed)
    judge_lib.save(FLAGS.output, params, held_out_accuracy=accuracy,
                   num_held_out=FLAGS.num_held_out, train_steps=FLAGS.steps)
    print("held-out accuracy:", {k: round(v, 4) for k, v in accuracy.items()})
    print("wrote", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
