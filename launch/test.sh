#!/usr/bin/env bash
# Sets up the environment (launch/setup_env.sh), lints (ruff, pyproject.toml) and runs the
# test suite on the CPU. Arguments go to pytest: `bash launch/test.sh -m "not slow"` runs
# the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
