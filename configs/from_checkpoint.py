"""The config a run was trained or converted with, read from its checkpoints.

    python -m mdm_jax.sample --config=configs/from_checkpoint.py:runs/mdm_256 \
        --config.model.attention_impl=cudnn --checkpoint=runs/mdm_256 --prompt=...
    python -m mdm_jax.train --config=configs/from_checkpoint.py:runs/mdm_256 \
        --config.stages.res256.steps=10000 --config.data.manual_dir=... --workdir=runs/mdm_256

The argument is the run directory (holding checkpoints/<stage>/<step>); --config.*
overrides apply on top, as with any config file.
"""
from mdm_jax.runs.checkpoints import saved_run_config


def get_config(run_dir):
    if not run_dir:
        raise ValueError("Give the run directory: --config=configs/from_checkpoint.py:RUN_DIR")
    return saved_run_config(run_dir)
