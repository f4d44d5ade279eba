"""One training run per workdir: a lock file that a second run is refused on.

The lock (RunDir.lock) names its holder (host, pid) and is refreshed as the run logs. A
lock whose holder is gone (a dead pid on this host, or no refresh for STALE_SECONDS, as
after a machine was lost) is taken over with a warning; a live one refuses the run.
"""
import json
import os
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

STALE_SECONDS = 15 * 60


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """Context manager held by process 0 of a training run; every process learns whether
    it was taken, and all refuse together if not."""

    def __init__(self, run_dir):
        self.path = run_dir.lock
        self.held = False

    def _owner(self):
        return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}

    def _holder_gone(self, holder):
        if time.time() - holder.get("time", 0) > STALE_SECONDS:
            return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])

    def _try_acquire(self):
        """'' when taken, else why not."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                holder = json.loads(self.path.read_text())
            except ValueError:
                holder = {}  # an unreadable lock (a torn write) holds nothing
            if holder and not self._holder_gone(holder):
                return (f"Another training run (host {holder.get('host')}, pid "
                        f"{holder.get('pid')}) is writing to {self.path.parent}: wait for it "
                        "to finish, stop it, or pass another --workdir. If no run is "
                        f"active there, delete {self.path}.")
            logging.warning("Taking over the lock of a run that is gone: %s", holder)
        self.path.write_text(json.dumps(self._owner()))
        return ""

    def refresh(self):
        if self.held:
            self.path.write_text(json.dumps(self._owner()))

    def __enter__(self):
        why_not = self._try_acquire() if jax.process_index() == 0 else ""
        taken = np.array(not why_not)
        if jax.process_count() > 1:
            taken = multihost_utils.broadcast_one_to_all(taken)
        if not bool(taken):
            raise RuntimeError(why_not or "Process 0 could not take the workdir's lock: "
                               "another run is writing there (process 0's log says which).")
        self.held = jax.process_index() == 0
        return self

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
