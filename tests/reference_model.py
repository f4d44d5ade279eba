"""Reference-format files of a small nested text model: the yaml laid out as the released
ones, its state dict under the reference's key names with random values (.pth with a
pickled object of "the reference's" beside it, .safetensors, .npz), and a tiny T5."""
import numpy as np
import yaml
from safetensors.numpy import save_file

import parity_utils
from tiny_t5 import write_tiny_t5

CAPTIONS = ["a red circle", "two blue squares", "a green triangle on stripes"]


class ReferenceArgs:
    """Stands for the reference's own objects that its EMA files pickle beside the
    weights; reading must not need (or run) their code."""

    def __init__(self):
        self.lr = 5e-5


def reference_yaml(unet_config):
    """A model yaml laid out as the released ones: shared settings at the top level,
    the sampler settings again under diffusion_config."""
    return dict(
        name="tiny_nested", sample_image_size=64, num_diffusion_steps=1000,
        prediction_type="V_PREDICTION", loss_target_type="DDPM", schedule_type="DEEPFLOYD",
        use_double_loss=True, no_use_residual=True, schedule_shifted=True,
        mixed_ratio="2:1", lr=5e-5, warmup_steps=10, num_training_steps=1000,
        text_model="google/flan-t5-xl", unet_config=unet_config,
        diffusion_config=dict(
            sampler_config=dict(num_diffusion_steps=1000, schedule_type="DEEPFLOYD",
                                prediction_type="V_PREDICTION", loss_target_type="DDPM",
                                beta_start=0.0001, beta_end=0.02, threshold_function="CLIP",
                                rescale_schedule=1.0, schedule_shifted=True),
            model_output_scale=0.0, use_vdm_loss_weights=False, no_use_residual=True),
        reader_config=dict(image_size=64, max_token_length=12))


def write_reference_model(directory):
    """Writes the files into directory (a pathlib.Path); returns what the tests compare."""
    import torch  # noqa: PLC0415 (test extra)
    f = parity_utils.load("nested_unet_forward")   # 64² around 16², text width 16
    unet_config = parity_utils.read_json(f, "config_json")
    rng = np.random.default_rng(0)
    state_dict = {k: (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
                  for k, v in parity_utils.state_dict(f).items()}
    with open(directory / "model.yaml", "w") as out:
        yaml.safe_dump(reference_yaml(unet_config), out)
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state_dict.items()},
                "args": ReferenceArgs()}, directory / "vis_model.pth")
    save_file(state_dict, str(directory / "vis_model.safetensors"))
    np.savez(directory / "vis_model.npz", **state_dict)
    write_tiny_t5(str(directory / "t5"), CAPTIONS, d_model=16)
    return dict(dir=directory, unet_config=unet_config, state_dict=state_dict)
