"""The train step compiled while the state is made.

Compiling the step needs only its arguments' shapes, dtypes and shardings, so it can run
while the state is initialised or grown: minutes of XLA compile (or, with the persistent
cache, seconds of loading) overlap the seconds of making the state. jax's maintainers
advise tracing and lowering (Python, holding the GIL) in the calling thread and compiling
(XLA, which releases it) in another (jax-ml/jax#11788). The jitted function keeps what
it compiled: a later call with arguments of those shapes and shardings does not compile
again (tests/test_train_step.py checks it for the trainer's step).
"""
import concurrent.futures
import time


class CompileAhead:
    """Lowers `jitted` for `args` (arrays, or ShapeDtypeStructs with shardings) now and
    compiles it in a background thread; `wait()` returns when it is compiled."""

    def __init__(self, jitted, *args):
        start = time.perf_counter()
        lowered = jitted.lower(*args)
        self.lower_s = time.perf_counter() - start
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile")
        self._future = self._pool.submit(self._compile, lowered)

    @staticmethod
    def _compile(lowered):
        start = time.perf_counter()
        lowered.compile()
        return time.perf_counter() - start

    def wait(self):
        """The compile's own seconds, once it is done; raises the compiler's error."""
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()
