#!/usr/bin/env bash
# Sets up the environment (launch/setup_env.sh), lints (ruff, pyproject.toml) and runs the
# test suite on the CPU. Arguments go to pytest: `bash launch/test.sh -m "not slow"` runs
# the fast tests only, `-n 0` in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh test
.venv/bin/ruff check .
# Two workers (CI's machine has two cores); loadfile keeps a file's tests, and so its
# module fixtures (a shared training run, a data set), on one worker.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
