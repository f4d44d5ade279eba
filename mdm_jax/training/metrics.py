"""Training logs: TensorBoard event files, metrics.jsonl, and a console progress bar.

Only process 0 writes. Values are fetched to the host by the caller every `log_every`
steps, never per step, so logging doesn't stall the device queue. The console gets the
progress bar and one line per event (a stage starting, a save, a grid); everything
numeric goes to metrics.jsonl and TensorBoard.
"""
import contextlib
import json
import logging as logging_lib
import os
import time

import jax
import numpy as np
import tqdm
from absl import logging

from mdm_jax.data import counters as counters_lib
from mdm_jax.training import events

# The libraries we drive, and the least severe of their records the console shows: Orbax
# logs ~100 INFO lines a save and warns on every read-only open, tfds warns on every use of
# a builder config, gcsfs and fsspec log every file they open on gs://; none of it is
# something a user acts on.
_LIBRARY_LEVELS = {"orbax": logging_lib.ERROR, "tensorflow_datasets": logging_lib.ERROR,
                   "grain": logging_lib.WARNING, "jax": logging_lib.WARNING,
                   "gcsfs": logging_lib.WARNING, "fsspec": logging_lib.WARNING}


class _LibraryNoise(logging_lib.Filter):
    def filter(self, record):
        for name, level in _LIBRARY_LEVELS.items():
            if f"{os.sep}{name}{os.sep}" in record.pathname:
                return record.levelno >= level
        return True


def quiet_library_logs():
    """Keeps the console to our lines, warnings and errors (idempotent)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
        handler.addFilter(_LibraryNoise())


def _append(path, text):
    """Appends to a file; object stores (gs://) have no append, so there the small file
    is rewritten (one line per log_every steps)."""
    if "://" in str(path):
        path.write_text((path.read_text() if path.exists() else "") + text)
    else:
        with path.open("a") as f:
            f.write(text)


class DataCounters:
    """The data counters of the whole run: the latest batch's totals (cumulative over
    the stage, restores included, with the builder's counts) plus the bad records read
    in earlier stages."""

    def __init__(self):
        self._latest = {}
        self._earlier = {}

    def begin_stage(self, last_record):
        """Continues from the run-level totals logged when the previous stage ended."""
        self._earlier = {name: int(last_record.get(f"data/{name}", 0))
                         for name in counters_lib.READ_COUNTERS}
        self._latest = {}

    def add(self, batch):
        self._latest = batch["counters"]

    def totals(self):
        return {f"data/{name}": value + self._earlier.get(name, 0)
                for name, value in self._latest.items()}


class MetricsLog:
    """metrics.jsonl, TensorBoard and the progress bar of a run directory (RunDir)."""

    def __init__(self, run_dir, on_write=None):
        self.enabled = jax.process_index() == 0
        self.run_dir = run_dir
        self.on_write = on_write  # called after each record (the workdir lock's refresh)
        self.counters = DataCounters()
        self.bar = None
        if self.enabled:
            self.tensorboard = events.EventWriter(run_dir.tensorboard)

    def _records(self):
        if not self.run_dir.metrics.exists():
            return []
        lines = self.run_dir.metrics.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def begin_stage(self, stage, start):
        """Starts the progress bar of a stage resumed (or started) at its step `start`.

        Records past the global step being resumed from were written by a run that died
        before its next checkpoint: they are dropped, so metrics.jsonl (and its counters)
        describe the run that continues. Every process reads the file (the counters must
        agree); only process 0 rewrites it.
        """
        resumed_at = stage.step_offset + start
        records = self._records()
        kept = [r for r in records if r["step"] <= resumed_at]
        with_counters = [r for r in kept if r["step"] <= stage.step_offset and
                         any(k.startswith("data/") for k in r)]
        self.counters.begin_stage(with_counters[-1] if with_counters else {})
        if not self.enabled:
            return
        if len(kept) < len(records):
            self.run_dir.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
            logging.warning("Dropped %d metrics.jsonl record(s) past step %d, written "
                            "after the checkpoint this run resumes from.",
                            len(records) - len(kept), resumed_at)
        if self.bar is not None:
            self.bar.close()
        self.message(f"Stage {stage.name}: {stage.image_size}px, "
                     f"{'resuming at' if start else 'starting'} step {start} of "
                     f"{stage.config.steps}.")
        self.bar = tqdm.tqdm(total=stage.config.steps, initial=start,
                             desc=f"stage {stage.name}", dynamic_ncols=True,
                             mininterval=1.0)

    def write(self, step, scalars):
        """Logs host scalars (a dict of numbers) at a global step, with the counters."""
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        if "loss" in scalars:  # a training record: the data counters go with it
            scalars.update(self.counters.totals())
        for key, value in scalars.items():
            self.tensorboard.scalar(key, value, step)
        self.tensorboard.flush()
        _append(self.run_dir.metrics,
                json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        if self.on_write:
            self.on_write()
        shown = {k: f"{scalars[k]:.4g}" for k in ("loss", "images_per_s_per_chip")
                 if k in scalars}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)

    def image(self, step, tag, image_uint8):
        if self.enabled:
            self.tensorboard.image(tag, image_uint8, step)

    def message(self, text):
        """One console line above the progress bar (process 0)."""
        if self.enabled:
            tqdm.tqdm.write(text)

    def advance(self, steps):
        if self.enabled and self.bar is not None:
            self.bar.update(steps)

    def close(self):
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.tensorboard.close()


# Dense bf16 peak FLOP/s per chip, for MFU. Unknown devices (CPUs) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops_per_chip(device):
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device.device_kind.lower():
            return flops
    return None


class Throughput:
    """Images/s per chip and MFU over the steps since the last report.

    Time spent saving checkpoints or sampling is excluded by calling `pause()`/`resume()`.
    """

    def __init__(self, flops_per_example, num_chips, peak_flops_per_chip=None):
        self.flops_per_example = flops_per_example
        self.num_chips = num_chips
        self.peak = peak_flops_per_chip
        self.reset()

    def reset(self):
        self.start = time.perf_counter()
        self.excluded = 0.0
        self.examples = 0
        self.steps = 0

    def count(self, examples):
        self.examples += examples
        self.steps += 1

    def pause(self):
        self._paused_at = time.perf_counter()

    def resume(self):
        self.excluded += time.perf_counter() - self._paused_at

    @contextlib.contextmanager
    def paused(self):
        """Excludes the time inside the block (saving, sampling, evaluating)."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def report(self):
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        per_chip = self.examples / seconds / self.num_chips
        out = {"step_time_s": seconds / max(self.steps, 1), "images_per_s_per_chip": per_chip,
               "tflops_per_s_per_chip": per_chip * self.flops_per_example / 1e12}
        if self.peak:
            out["mfu"] = per_chip * self.flops_per_example / self.peak
        self.reset()
        return out
