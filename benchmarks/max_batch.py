"""The largest per-device batch whose train step fits a card's memory, as JSON lines.

    python -m benchmarks.max_batch --config=configs/cc12m_64.py --probe_batches=32,64 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl [--remat]

Compiles the config's last-stage train step (text as features in the batch, as
`python -m mdm_jax.compile_for` and the reference train) for one card described by
`--card` (mdm_jax/training/gpu_targets.py: any host, no GPU needed; the gpu-aot extra) at
the probe batches, without running it, and reads XLA's memory analysis: arguments +
outputs - donated + temporaries. Memory grows linearly with the batch (the state is
fixed, activations scale), so two probes give the line; from where it meets each card's
limit, a few more compiles find the largest batch that fits (`largest_fitting`).

A card's limit is the share of its memory that jax's allocator may use (0.75 by default,
XLA_CLIENT_MEM_FRACTION sets it) of the card's memory: an 80 GB H100 has 81,559 MiB, a
141 GB H200 143,771 MiB (nvidia-smi). The programs compiled for --card are held against
both cards' limits; XLA rematerialises to fit the card it compiles for, so for the other
card the answer is a lower bound (run again with that --card for its own).
"""
import json
import math

from absl import app, flags
from ml_collections import config_flags

from mdm_jax.parallel import xla_flags
from mdm_jax.runs.stages import plan_stages
from mdm_jax.training import ahead_of_time, gpu_targets

config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
flags.DEFINE_list("probe_batches", ["8", "16"], "Two batch sizes to fit the line through.")
flags.DEFINE_bool("remat", False, "Recompute every level's activations in backward.")
flags.DEFINE_enum("card", "h200", sorted(gpu_targets.CARDS), "The card to compile for.")
FLAGS = flags.FLAGS

CARDS = {"80 GB (H100)": "h100", "141 GB (H200)": "h200"}


def set_remat(level):
    while level is not None:
        level.remat = True
        level = level.get("inner")


def largest_fitting(compiled_bytes, guess, limit, slope):
    """The largest batch whose compiled step fits `limit`, searched from the line's
    `guess`: each compile moves the guess by what the gap to the limit is worth at the
    slope between the last two compiles, kept inside the bracket of batches known to fit
    and not to; it ends when the answer's successor was compiled and did not fit (a
    compile takes minutes: this takes a few, not one per batch)."""
    fits, too_big = 0, None
    batch, last = max(guess, 1), None
    while too_big is None or too_big - fits > 1:
        used = compiled_bytes(batch)
        if last is not None and last[0] != batch and used != last[1]:
            slope = max((used - last[1]) / (batch - last[0]), slope / 4)
        last = (batch, used)
        if used <= limit:
            fits = batch
        else:
            too_big = batch
        target = batch + math.floor((limit - used) / slope)
        if used <= limit:
            target = max(target, batch + 1)
        batch = max(target, fits + 1)
        if too_big is not None:
            batch = min(batch, too_big - 1)
    return fits


def main(argv):
    del argv
    xla_flags.apply_defaults()  # the program the trainer's process would compile
    config = FLAGS.config
    if FLAGS.remat:
        with config.unlocked():
            set_remat(config.model.unet)
    devices = ahead_of_time.topology_devices(FLAGS.card)
    stage = plan_stages(config)[-1]
    share = gpu_targets.memory_fraction()
    limits = {card: gpu_targets.usable_bytes(gpu_targets.CARDS[name].name)
              for card, name in CARDS.items()}
    memory = {}

    def compiled_bytes(batch):
        if batch not in memory:
            report = ahead_of_time.compile_train_step(config, devices, batch_size=batch)
            memory[batch] = report["per_chip_memory_bytes"]
            print(json.dumps({"benchmark": "max_batch_probe", "device": devices[0].device_kind,
                              "stage": stage.name, "remat": FLAGS.remat, "batch": batch,
                              "memory_gib": memory[batch] / 2**30}), flush=True)
        return memory[batch]

    small, large = sorted(map(int, FLAGS.probe_batches))
    per_example = (compiled_bytes(large) - compiled_bytes(small)) / (large - small)
    fixed = compiled_bytes(small) - per_example * small
    for card, limit in limits.items():
        batch = largest_fitting(compiled_bytes, int((limit - fixed) // per_example), limit,
                                per_example)
        print(json.dumps({
            "benchmark": "max_batch", "card": card, "memory_share": share,
            "limit_gib": limit / 2**30,
            "measured_on": devices[0].device_kind, "stage": stage.name,
            "image_size": stage.image_size, "remat": FLAGS.remat, "max_batch": batch,
            "memory_gib_at_max": memory.get(batch, 0) / 2**30,
            "fixed_gib": fixed / 2**30, "per_example_gib": per_example / 2**30}), flush=True)


if __name__ == "__main__":
    app.run(main)
