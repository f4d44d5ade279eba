"""Trains a config's stages: python -m mdm_jax.train --config=configs/NAME.py[:ARG] --workdir=DIR.

Overrides: --config.stages.res64.steps=1000 --config.data.data_dir=/data ... Multi-host:
pass --distributed (TPU pods and SLURM detect the rest) or the coordinator flags.
"""
import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.train import loop

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed():
    if FLAGS.coordinator_address:
        # CPU runs need gloo for cross-process collectives; GPUs and TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def main(argv):
    del argv
    initialize_distributed()
    logging.info("Process %d/%d, %d devices.", jax.process_index(), jax.process_count(),
                 jax.device_count())
    final = loop.train(FLAGS.config, FLAGS.workdir)
    logging.info("Done: %s", json.dumps(final))


if __name__ == "__main__":
    app.run(main)
