"""SIGTERM (preemption) handling: finish the step, save, exit cleanly.

With several processes every one must stop at the same step (saving is collective), so
the flag is combined across processes, but only on the steps that already sync to log.
"""
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
    def __init__(self):
        self.requested = False
        self.stopped = False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.requested = True

    def should_stop(self, sync):
        """True when this step should save and stop; `sync` marks steps that may all-gather."""
        if jax.process_count() == 1:
            stop = self.requested
        elif sync:
            stop = bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))
        else:
            stop = False
        self.stopped = self.stopped or stop
        return stop
