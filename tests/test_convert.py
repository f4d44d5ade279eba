"""Importing reference checkpoints: reference-format files (the reference's key names,
random values) of a small nested text model, read in every format, converted with
`python -m mdm_jax.convert`, and sampled with `python -m mdm_jax.sample`."""
import os
import sys

import jax
import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.numpy import save_file

import parity_utils
from mdm_jax import sampling_cli
from mdm_jax.convert import from_reference, release
from mdm_jax.convert.reference_files import read_state_dict
from mdm_jax.train import checkpoint as ckpt_lib
from mdm_jax.train import loop, sharding
from mdm_jax.train.text_conditioning import TextConditioning, resolve
from tiny_t5 import write_tiny_t5
from training_runs import run_to_end

torch = pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
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


@pytest.mark.parametrize("name", ["vis_model.pth", "vis_model.safetensors", "vis_model.npz"])
def test_every_format_reads_the_same_state_dict(reference, name):
    read = read_state_dict(str(reference["dir"] / name))
    assert sorted(read) == sorted(reference["state_dict"])
    for key, value in reference["state_dict"].items():
        np.testing.assert_array_equal(read[key], value)


def test_pickled_code_beside_the_weights_is_not_run(tmp_path):
    class Runs:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Runs()}, tmp_path / "m.pth")
    assert list(read_state_dict(str(tmp_path / "m.pth"))) == ["w"]
    assert not (tmp_path / "ran").exists()


def converted_ema(run_dir):
    """The EMA params `sample` loads from a run directory, on this process's devices."""
    config = ckpt_lib.saved_run_config(run_dir)
    resolve(config)
    stage = loop.plan_stages(config)[-1]
    directory = os.path.join(run_dir, "checkpoints", stage.name)
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    text = TextConditioning.create(config, mesh, rules)
    return config, sampling_cli.load_ema_params(config, stage, directory, 0, text, mesh, rules)


def test_convert_command_then_sample_command(reference, tmp_path):
    run_dir = str(tmp_path / "run")
    run_to_end([sys.executable, "-m", "mdm_jax.convert",
                f"--reference_config={reference['dir'] / 'model.yaml'}",
                f"--checkpoint={reference['dir'] / 'vis_model.pth'}", f"--output={run_dir}",
                f"--text_encoder_dir={reference['dir'] / 't5'}"])

    config, ema = converted_ema(run_dir)
    _, expected = from_reference(reference["unet_config"], reference["state_dict"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, ema["unet"], expected)
    # The yaml's diffusion settings and text length, the stage's mixed batches.
    assert (config.diffusion.prediction_type, config.diffusion.loss_target_type,
            config.diffusion.schedule_type) == ("v", "eps", "deepfloyd")
    assert tuple(config.stages.res64.mixed_ratio) == (2.0, 1.0)
    assert config.text.max_length == 12

    output = str(tmp_path / "samples")
    run_to_end([sys.executable, "-m", "mdm_jax.sample", f"--checkpoint={run_dir}",
                "--prompts=" + write_prompts(tmp_path), "--negative_prompt=blue",
                "--guidance=3", "--num_steps=2", "--batch_size=2", f"--output={output}"])
    assert sorted(os.listdir(output)) == ["00000.png", "00001.png", "00002.png", "grid.png"]
    assert np.asarray(Image.open(os.path.join(output, "00000.png"))).shape == (64, 64, 3)
    # Three rows (padded batch trimmed), the 64² level beside the 16² one scaled up.
    assert np.asarray(Image.open(os.path.join(output, "grid.png"))).shape == (192, 128, 3)


def write_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(CAPTIONS) + "\n")
    return str(path)


@pytest.mark.parametrize("name", ["vis_model.safetensors", "vis_model.npz"])
def test_numpy_formats_convert_to_the_same_params(reference, tmp_path, name):
    run_dir = str(tmp_path / "run")
    release.convert(str(reference["dir"] / "model.yaml"), str(reference["dir"] / name),
                    run_dir, str(reference["dir"] / "t5"))
    _, ema = converted_ema(run_dir)
    _, expected = from_reference(reference["unet_config"], reference["state_dict"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, ema["unet"], expected)


def test_bad_inputs_name_the_fix(reference, tmp_path):
    yaml_path, t5 = str(reference["dir"] / "model.yaml"), str(reference["dir"] / "t5")
    npz = str(reference["dir"] / "vis_model.npz")
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes((reference["dir"] / "vis_model.pth").read_bytes()[:5000])
    (tmp_path / "w.ckpt").write_bytes(b"")
    not_a_model = tmp_path / "other.yaml"
    not_a_model.write_text("name: x\n")
    cases = [
        ((yaml_path, str(truncated)), ValueError, "re-download"),
        ((yaml_path, str(tmp_path / "missing.pth")), FileNotFoundError, "does not exist"),
        ((yaml_path, str(tmp_path / "w.ckpt")), ValueError, "unknown format"),
        ((str(not_a_model), npz), ValueError, "no unet_config"),
    ]
    for (config_path, checkpoint), error, message in cases:
        with pytest.raises(error, match=message):
            release.convert(config_path, checkpoint, str(tmp_path / "out"), t5)
    release.convert(yaml_path, npz, str(tmp_path / "run"), t5)
    with pytest.raises(FileExistsError, match="another --output"):
        release.convert(yaml_path, npz, str(tmp_path / "run"), t5)
