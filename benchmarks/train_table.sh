#!/usr/bin/env bash
# Issue 12's training table in one device call: the three cc12m presets' last stages at the
# table's batches (text as features), compiled side by side first (each fills its own
# compilation cache; those processes' step times are not used, as compiling processes
# slow the others' steps), then measured one at a time, each process alone on the card
# with its cache warm. One JSON line per preset on stdout.
# Usage: bash benchmarks/train_table.sh [bench_train flags...]
#   bash benchmarks/train_table.sh --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl
# The compile phase holds the three states at once (about 75 GiB on one card).
# PRESETS="CONFIG BATCH [FLAGS];CONFIG BATCH..." replaces the three; a preset's own flags
# follow the common ones, so one config can be measured with and without a setting (a
# CPU check: PRESETS="configs/demo.py:smoke 4;configs/demo.py:smoke 8" PYTHON=.venv/bin/python ...).
# Each line gets "preset": the preset's text as given.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
caches="$(mktemp -d)"
trap 'rm -rf "$caches"' EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # three processes share the card at first
IFS=';' read -ra presets <<< "${PRESETS:-configs/cc12m_64.py 32;configs/cc12m_256.py 16;configs/cc12m_1024.py 4}"
bench() {  # CONFIG BATCH STEPS [flags...]; logs and cache under $caches/<n>
  local config="$1" batch="$2" steps="$3" n="$4"
  shift 4
  "$python" -m benchmarks.bench_train --config="$config" --batch_size="$batch" \
    --text=features --steps="$steps" --compile_cache_dir="$caches/$n" "$@"
}
for n in "${!presets[@]}"; do
  read -r config batch extra <<< "${presets[$n]}"
  # shellcheck disable=SC2086  # a preset's flags are words
  bench "$config" "$batch" 1 "$n" "$@" $extra > "$caches/$n.compile.log" 2>&1 &
done
wait
status=0
for n in "${!presets[@]}"; do
  read -r config batch extra <<< "${presets[$n]}"
  # shellcheck disable=SC2086
  bench "$config" "$batch" 10 "$n" "$@" $extra 2> "$caches/$n.err" | grep '^{' |
    sed "s|^{|{\"preset\": \"${presets[$n]}\", |" | grep . ||
    { echo "$config failed:" >&2; tail -n 5 "$caches/$n.compile.log" "$caches/$n.err" >&2
      status=1; }
done
exit "$status"
