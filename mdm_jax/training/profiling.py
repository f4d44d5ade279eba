"""A profiler trace of a few training steps, for TensorBoard's profile plugin.

With config.profile_steps = N > 0, the N steps after each stage's first (the first
compiles) are traced into <workdir>/tensorboard (its plugins/profile/<time>/ folder), by
process 0. `python -m benchmarks.trace_summary` reads a perfetto trace without TensorBoard.
"""
import jax


class StepTrace:
    def __init__(self, num_steps, first_step, log_dir):
        self.start = first_step + 1
        self.stop = self.start + num_steps
        self.enabled = num_steps > 0 and jax.process_index() == 0
        self.log_dir = str(log_dir)
        self.tracing = False

    def before(self, step):
        """Call before running step `step` (0-based)."""
        if self.enabled and step == self.start:
            jax.profiler.start_trace(self.log_dir)
            self.tracing = True

    def after(self, step, outputs):
        """Call after running step `step`; blocks on `outputs` when the trace ends."""
        if self.tracing and (step + 1 == self.stop):
            self.finish(outputs)

    def finish(self, outputs=None):
        if self.tracing:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.tracing = False
