"""Training logs: TensorBoard event files, metrics.jsonl, and a console progress bar.

Only process 0 writes. Values are fetched to the host by the caller every `log_every`
steps, never per step, so logging doesn't stall the device queue.
"""
import json
import os
import time

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter


class MetricsLog:
    def __init__(self, workdir, total_steps, initial_step=0, description="train"):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self.bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=description,
                             dynamic_ncols=True, mininterval=1.0)

    def write(self, step, scalars):
        """Logs host scalars (a dict of numbers) at a global step."""
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for key, value in scalars.items():
            self.tensorboard.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        self.jsonl.flush()
        shown = {k: f"{scalars[k]:.4g}" for k in ("loss", "images_per_s_per_chip") if k in scalars}
        self.bar.set_postfix(shown, refresh=False)

    def advance(self, steps):
        if self.enabled:
            self.bar.update(steps)

    def image(self, step, tag, image_uint8):
        if self.enabled:
            self.tensorboard.add_image(tag, image_uint8, step, dataformats="HWC")

    def close(self):
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
            self.jsonl.close()


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

    def report(self):
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        per_chip = self.examples / seconds / self.num_chips
        out = {"step_time_s": seconds / max(self.steps, 1), "images_per_s_per_chip": per_chip,
               "tflops_per_s_per_chip": per_chip * self.flops_per_example / 1e12}
        if self.peak:
            out["mfu"] = per_chip * self.flops_per_example / self.peak
        self.reset()
        return out
