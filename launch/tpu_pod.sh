#!/usr/bin/env bash
# Runs training on every worker of a Cloud TPU pod slice. jax.distributed finds the
# coordinator and process ids from the TPU metadata (--distributed). Attention runs on
# XLA (the presets' cuDNN attention is for GPUs); a later flag overrides it.
# Usage: TPU_NAME=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh \
#          --config=configs/cc12m_256.py --workdir=gs://bucket/runs/cc12m_256 [overrides]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-~/mdm-jax}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && bash launch/setup_env.sh && .venv/bin/pip install -q 'jax[tpu]==0.11.2' \
   && .venv/bin/python -m mdm_jax.train --distributed --config.model.attention_impl=xla$args"
