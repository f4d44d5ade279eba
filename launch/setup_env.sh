#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs mdm-jax (editable) with its pinned
# requirements. Safe to rerun. Usage: bash launch/setup_env.sh [extras, e.g. test]
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  # jax 0.11 needs Python >= 3.12; plain python3 is often older.
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"; return
    fi
  done
  # pyenv installs Pythons that its shims hide unless selected.
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.1[23]*/bin/python3; do
      if [[ -x "$candidate" ]]; then echo "$candidate"; return; fi
    done
  fi
  echo "No Python >= 3.12 found; install one or set PYTHON=/path/to/python3.12" >&2
  exit 1
}

if [[ ! -x .venv/bin/python ]]; then
  "$(find_python)" -m venv .venv
fi
extras="${1:-}"
# uv (from PyPI) installs the same pinned wheels as pip, but downloads them in parallel
# and links them from its cache: a fresh install of the test extra (PyPI's torch brings
# ~4 GB of CUDA wheels) takes ~30 s instead of ~110 s.
.venv/bin/python -m pip install --quiet uv==0.13.8
# The override keeps requirements.txt's pillow where an extra's package bounds it lower
# (gradio 6.31.0 asks for pillow<13 and runs with 13: tests/test_serve.py).
.venv/bin/uv pip install --quiet --python .venv/bin/python -e ".${extras:+[$extras]}" \
  --override <(grep '^pillow==' requirements.txt)
