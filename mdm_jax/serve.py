"""A sampling web page for a trained or converted model: python -m mdm_jax.serve --checkpoint=RUN.

    bash launch/setup_env.sh serve   # Gradio (docs/serving.md: why not plain pip)
    python -m mdm_jax.serve --checkpoint=workdir/demo [--port=7860] [--host=0.0.0.0]

Loads the EMA params of the stage's latest checkpoint (default: the last stage that has
one), its text encoder and mesh once, then serves a page at http://HOST:PORT: prompt (or
class label), negative prompt, sampler, steps, guidance, eta, seed and batch; previews of
every level's x̂0 while it denoises; every level side by side and the PNGs that
`python -m mdm_jax.sample` writes for the same settings. Requests queue and run one at a
time. --config (or configs/from_checkpoint.py:RUN with --config.* overrides) replaces the
config saved with the checkpoint, as for the sample command. One process: the batch is
split over its local devices (multi-host serving is not supported).
"""
from absl import app, flags
from ml_collections import config_flags

from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.serving import page
from mdm_jax.training import metrics

config_flags.DEFINE_config_file("config", None, "Experiment config file (default: the "
                                "config saved with the checkpoint).", lock_config=True)
flags.DEFINE_string("checkpoint", None, "A training run's workdir or a converted model "
                    "(a folder holding checkpoints/<stage>/<step>).")
flags.DEFINE_string("stage", None, "Stage to sample (default: the last with checkpoints).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 7860, "Port to listen on.")
flags.DEFINE_integer("max_batch_size", 8, "The largest batch a request may ask for (what "
                     "fits the device's memory).")
flags.DEFINE_integer("max_steps", None, "The most sampler steps a request may ask for "
                     "(default: the model's diffusion steps).")
flags.DEFINE_integer("queue_size", 16, "Requests that may wait; more are turned away.")
flags.DEFINE_integer("cache_programs", 8, "Compiled sampling programs kept (one per "
                     "sampler, steps, eta, guidance and batch setting).")
flags.mark_flags_as_required(["checkpoint"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    metrics.quiet_library_logs()  # Orbax's INFO lines: one a checkpoint read
    config = FLAGS.config or checkpoints_lib.saved_run_config(FLAGS.checkpoint, FLAGS.stage)
    page.serve(config, FLAGS.checkpoint, stage=FLAGS.stage, host=FLAGS.host, port=FLAGS.port,
               max_batch=FLAGS.max_batch_size, max_steps=FLAGS.max_steps,
               queue_size=FLAGS.queue_size, cache_size=FLAGS.cache_programs)


if __name__ == "__main__":
    app.run(main)
