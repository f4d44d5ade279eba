"""Modules imported at their first use inside a test rather than when the file is
collected: every pytest-xdist worker collects every test file, and importing torch and
transformers for tests/test_clip.py cost each worker 7 s before any test ran (collecting the
suite: 16.5 s before, 14.0 s after).

Only for reading attributes: monkeypatching a module through its stand-in patches the
stand-in, which is why tests/test_fid.py (it patches pytorch_fid) imports its modules plainly."""
import pytest


class LazyModule:
    """Stands for a module; the first attribute read imports it, as pytest.importorskip does
    (the test that needs a missing module is skipped with `reason`)."""

    def __init__(self, name, reason=None):
        self._name = name
        self._reason = reason

    def __getattr__(self, attribute):
        module = pytest.importorskip(self._name, reason=self._reason)
        return getattr(module, attribute)
