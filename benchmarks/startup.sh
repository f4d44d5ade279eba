#!/usr/bin/env bash
# Issue 12's start-up measurement in one call: bench_train from a fresh process with an
# empty compilation cache and then again with that cache (cold, warm), the step compiled
# after the state (--nocompile_ahead) and while it is made (--compile_ahead), each a
# process of its own. One JSON line each on stdout, "variant" added.
# Usage: bash benchmarks/startup.sh CONFIG BATCH [bench_train flags...]
#   bash benchmarks/startup.sh configs/cc12m_64.py 32 --text=features \
#       --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl
set -uo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: bash benchmarks/startup.sh CONFIG BATCH [flags...]}"
batch="${2:?usage: bash benchmarks/startup.sh CONFIG BATCH [flags...]}"
shift 2
python="${PYTHON:-python}"
caches="$(mktemp -d)"
trap 'rm -rf "$caches"' EXIT
for order in nocompile_ahead compile_ahead; do
  for start in cold warm; do
    "$python" -m benchmarks.bench_train --config="$config" --batch_size="$batch" --steps=5 \
      --"$order" --compile_cache_dir="$caches/$order" "$@" |
      grep '^{' | sed "s/^{/{\"variant\": \"$order $start\", /"
  done
done
