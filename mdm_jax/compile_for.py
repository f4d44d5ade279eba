"""Compiles a config's train step for a TPU slice or GPU host this machine doesn't have, and
says whether it fits: python -m mdm_jax.compile_for --config=configs/NAME.py --topology=v5p:4x4x4
(or --topology=h100:8, eight H100s of one host).

Needs libtpu (pip install -e '.[tpu]') or jax's CUDA plugin (pip install -e '.[gpu-aot]');
runs on any host, no TPU or GPU needed. Prints one JSON
line: chips, mesh, per-chip memory, FLOPs per chip and collectives of the step (the
config's last stage, or --stage; its global batch, or --batch_size), and whether it fits.
Exits 1 with one line naming the fixes when the step needs more memory than a chip has
(or --hbm_gib); when the TPU compiler itself gives up for lack of memory, the line says
how much its temporaries alone need.
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from mdm_jax.parallel import xla_flags
from mdm_jax.training import ahead_of_time

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("topology", None, "A TPU slice: 'v5e:16x16', 'v5p:4x4x4', ...; or "
                    "NVIDIA cards: 'h200' (one), 'h100:8' (8 of one host), 'h100:2x8'.")
flags.DEFINE_string("stage", None, "Stage to compile (default: the config's last).")
flags.DEFINE_integer("batch_size", None, "Global batch (default: the stage's).")
flags.DEFINE_float("hbm_gib", None, "Memory per chip to fit in (default: the chip's; for a "
                   "GPU, jax's allocator's share of it, XLA_CLIENT_MEM_FRACTION or 0.75).")
flags.DEFINE_string("save_hlo", None, "Write the compiled program's text (optimised HLO) "
                    "to this file.")
flags.mark_flags_as_required(["config", "topology"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    xla_flags.apply_defaults()  # the program the trainer's process would compile
    devices = ahead_of_time.topology_devices(FLAGS.topology)
    report = ahead_of_time.compile_train_step(FLAGS.config, devices, FLAGS.stage,
                                              FLAGS.batch_size, FLAGS.save_hlo)
    if FLAGS.hbm_gib is not None:
        report["hbm_bytes"] = int(FLAGS.hbm_gib * 2**30)
        report["fits"] = report["fits"] and report["per_chip_memory_bytes"] <= report["hbm_bytes"]
    print(json.dumps(report), flush=True)
    limit = report["hbm_bytes"]
    if not report["fits"]:
        at_least = "" if "flops_per_chip" in report else "at least "
        sys.exit(f"The step needs {at_least}{report['per_chip_memory_bytes'] / 2**30:.2f} GiB "
                 f"per chip on {FLAGS.topology}, more than its {limit / 2**30:.2f} GiB: "
                 "rematerialise levels (--config.model.unet.remat=True, ...unet.inner.remat), "
                 "set --config.stages.<stage>.gradient_accumulation_steps, lower the global "
                 "batch, or take a larger slice.")


if __name__ == "__main__":
    app.run(main)
