#!/usr/bin/env bash
# Sets up the environment (launch/setup_env.sh), lints (ruff, pyproject.toml) and runs the
# test suite on the CPU. Arguments go to pytest: `bash launch/test.sh -m "not slow"` runs
# the fast tests only, `-n 0` in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh test
# tests/test_serve.py drives Debian's Chromium (a clean Debian machine, as CI's, lacks it).
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "No chromium: tests/test_serve.py will fail; sudo apt-get install -y chromium" >&2
  fi
fi
.venv/bin/ruff check .
# Two workers (CI's machine has two cores), each taking the next test when idle
# (worksteal: the end-to-end tests take from seconds to minutes); the data set and the
# training run that tests share are made once for both (tests/conftest.py).
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal "$@"
