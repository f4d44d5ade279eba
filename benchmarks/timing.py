"""What the benchmark scripts share: timing a jitted call after its warm-up."""
import os
import time

import jax


def timed(fn, repeats, warmup=1):
    """Seconds per call of fn() (which returns something to block on), after `warmup`
    untimed calls (the first compiles)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def seconds_since_process_start():
    """Wall seconds since this process started, imports included (Linux: /proc)."""
    with open("/proc/self/stat") as f:
        # Field 22 is the start time in clock ticks after boot; the name (field 2) may
        # hold spaces, so count from the closing parenthesis.
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
