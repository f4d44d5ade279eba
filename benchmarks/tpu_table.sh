#!/usr/bin/env bash
# The TPU ahead-of-time table of docs/performance.md: every cc12m preset's last stage at its
# global batch, compiled for v5e-256, v5p-64 and v5p-128, without and with remat, one
# `python -m mdm_jax.compile_for` after another (20-35 min each on 2 cores; ~2 min for one
# that doesn't fit). Each cell's JSON line goes to OUT/<cell>.json; cells already there are
# skipped, so the table can be built across several sittings.
# Usage: bash benchmarks/tpu_table.sh OUT   (needs libtpu: launch/setup_env.sh test or tpu)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/tpu_table.sh OUT_DIR}"
mkdir -p "$out"
declare -A LEVELS=([64]=1 [256]=2 [1024]=3)
for remat in off on; do
  for preset in 64 256 1024; do
    for topology in v5e:16x16 v5p:4x4x4 v5p:4x4x8; do
      cell="cc12m_${preset}_${topology//:/}_${remat}"
      [[ -s "$out/$cell.json" ]] && continue
      flags=()
      if [[ $remat == on ]]; then  # every level of the preset: 64² has 1, 256² 2, 1024² 3
        level="--config.model.unet"
        for _ in $(seq "${LEVELS[$preset]}"); do
          flags+=("$level.remat=True"); level="$level.inner"
        done
      fi
      start=$(date +%s)
      nice -n 19 .venv/bin/python -m mdm_jax.compile_for --config="configs/cc12m_$preset.py" \
        --topology="$topology" --config.text.t5.checkpoint_dir= \
        --config.text.t5.preset=flan-t5-xl "${flags[@]}" 2>"$out/$cell.log" |
        grep '^{' > "$out/$cell.json"
      echo "$cell compile_s=$(( $(date +%s) - start ))" | tee -a "$out/times.txt"
    done
  done
done
