#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the shapes data set, train the demo
# (32² UNet, grown into the 64² nested model), then sample one image per class and judge
# them with the shapes judge (python -m mdm_jax.evaluate): the score and the grid's path
# are printed at the end. Extra arguments go to the trainer, e.g.
# --config.stages.res64.steps=2000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
.venv/bin/python -m mdm_jax.train --config=configs/demo.py --workdir=workdir/demo "$@"
.venv/bin/python -m mdm_jax.evaluate --checkpoint=workdir/demo --num_samples=100 \
    --batch_size=50 --num_steps=25 --output=workdir/demo/eval
