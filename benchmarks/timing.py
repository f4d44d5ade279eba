"""What the benchmark scripts share: timing a jitted call after its warm-up."""
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
