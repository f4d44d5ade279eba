#!/usr/bin/env bash
# N processes on this machine (CPU: 4 fake devices each, or one GPU each), as a cluster
# would run them. Usage: bash launch/local.sh N --config=configs/demo.py --workdir=DIR [...]
set -euo pipefail
cd "$(dirname "$0")/.."
num_processes="$1"; shift
port="${PORT:-$((20000 + RANDOM % 20000))}"
pids=()
for ((i = 0; i < num_processes; i++)); do
  if [[ -z "${CUDA_VISIBLE_DEVICES+x}" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}"
  fi
  .venv/bin/python -m mdm_jax.train --coordinator_address="localhost:$port" \
    --num_processes="$num_processes" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
