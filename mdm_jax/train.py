"""Trains a config's stages: python -m mdm_jax.train --config=configs/NAME.py[:ARG] --workdir=DIR.

Overrides: --config.stages.res64.steps=1000 --config.data.data_dir=/data ... DIR may be a
local folder or a URL (gs://bucket/run). Multi-host: pass --distributed (TPU pods and
SLURM detect the rest) or the coordinator flags.

Exit status: 0 when every stage is done; 75 (EX_TEMPFAIL) when a SIGTERM stopped the run
after saving, so a scheduler (or a shell loop) knows to run the same command again.
"""
import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.parallel import distributed
from mdm_jax.training import loop, metrics

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

EXIT_PREEMPTED = 75


def main(argv):
    del argv
    metrics.quiet_library_logs()
    distributed.initialize_from_flags()
    logging.info("Process %d/%d, %d devices.", jax.process_index(), jax.process_count(),
                 jax.device_count())
    result = loop.train(FLAGS.config, FLAGS.workdir)
    if result.preempted:
        print(f"Preempted: saved step {result.step} of stage {result.stage}; run the same "
              "command again to resume.", flush=True)
        sys.exit(EXIT_PREEMPTED)
    print(f"Done: {json.dumps(result.metrics)}", flush=True)


if __name__ == "__main__":
    app.run(main)
