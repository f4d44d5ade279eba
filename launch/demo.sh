#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the shapes data set, train the demo
# (32² UNet, grown into the 64² nested model), and write sample grids to workdir/samples.
# Extra arguments go to the trainer, e.g. --config.stages.res64.steps=2000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
.venv/bin/python -m mdm_jax.train --config=configs/demo.py --workdir=workdir/demo "$@"
echo "Samples (every level side by side): $(ls -d "$PWD"/workdir/demo/samples/*.png | tail -1)"
