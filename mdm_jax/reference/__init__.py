"""Importing the reference's (apple/ml-mdm) models: configs, state dicts, checkpoints.

    python -m mdm_jax.convert --reference_config=cc12m_256x256.yaml \
        --checkpoint=vis_model.pth --output=runs/mdm_256

`from_reference` maps a reference `unet_config` and state dict to our model config and
params; `run_dir.write_run_dir` writes a whole run directory that `python -m mdm_jax.sample`
loads (README: "Apple's released models").
"""
from mdm_jax.reference.unet import (
                                   config_from_reference,
                                   from_reference,
                                   params_from_state_dict,
                                   reference_key_to_path,
)

__all__ = ["config_from_reference", "from_reference", "params_from_state_dict",
           "reference_key_to_path"]
