#!/usr/bin/env bash
# Sets up the environment (launch/setup_env.sh) and runs the test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh test
exec .venv/bin/python -m pytest -q "$@"
