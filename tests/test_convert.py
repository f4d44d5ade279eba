"""Importing reference checkpoints: reference-format files (the reference's key names,
random values) of a small nested text model, read in every format, converted with
`python -m mdm_jax.convert`, and sampled with `python -m mdm_jax.sample`."""
import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.parallel import sharding
from mdm_jax.reference import from_reference
from mdm_jax.reference import run_dir as run_dir_lib
from mdm_jax.reference.files import read_state_dict
from mdm_jax.runs import checkpoints as ckpt_lib
from mdm_jax.runs.stages import plan_stages
from mdm_jax.sampling import generate
from reference_model import CAPTIONS
from training_runs import COMPILE_CACHE, NO_GRIDS, run_to_end

# End to end: real training runs and commands (python -m pytest -m 'not slow' skips them).
pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")

@pytest.mark.parametrize("name", ["vis_model.pth", "vis_model.safetensors", "vis_model.npz"])
def test_every_format_reads_the_same_state_dict(reference_model, name):
    read = read_state_dict(str(reference_model["dir"] / name))
    assert sorted(read) == sorted(reference_model["state_dict"])
    for key, value in reference_model["state_dict"].items():
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
    stage = plan_stages(config)[-1]
    directory = os.path.join(run_dir, "checkpoints", stage.name)
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    text = TextConditioning.create(config, mesh, rules)
    return config, generate.load_ema_params(config, stage, directory, 0, text, mesh, rules)


def test_convert_command_then_sample_command(reference_model, tmp_path):
    run_dir, files = str(tmp_path / "run"), reference_model["dir"]
    run_to_end([sys.executable, "-m", "mdm_jax.convert",
                f"--reference_config={files / 'model.yaml'}",
                f"--checkpoint={files / 'vis_model.pth'}", f"--output={run_dir}",
                f"--text_encoder_dir={files / 't5'}"])

    config, ema = converted_ema(run_dir)
    _, expected = from_reference(reference_model["unet_config"],
                                 reference_model["state_dict"])
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


def test_a_converted_model_fine_tunes_from_its_saved_config(reference_model, data_dir,
                                                             tmp_path):
    """configs/from_checkpoint.py + the training command continue from the converted
    step 0, with another data set, worker count and batch size than the yaml's."""
    files, run_dir = reference_model["dir"], str(tmp_path / "run")
    run_dir_lib.write_run_dir(str(files / "model.yaml"), str(files / "vis_model.npz"), run_dir,
                    str(files / "t5"))
    run_to_end([sys.executable, "-m", "mdm_jax.train",
                f"--config=configs/from_checkpoint.py:{run_dir}", f"--workdir={run_dir}",
                "--config.stages.res64.steps=2", "--config.stages.res64.global_batch_size=8",
                "--config.data.dataset=shapes", f"--config.data.data_dir={data_dir}",
                "--config.data.shapes.image_size=64", "--config.data.shapes.num_examples=256",
                # The demo's scenes, which data_dir holds already: no build here.
                "--config.data.shapes.max_objects=1", "--config.data.shapes.min_size=large",
                "--config.data.shapes.plain_background=True", "--config.data.shapes.centred=True",
                "--config.data.shapes.upright=True",
                "--config.data.num_workers=0", "--config.log_every=1",
                "--config.checkpoint_every=1", "--config.model.dtype=float32",
                f"--config.compile_cache_dir={COMPILE_CACHE}", NO_GRIDS])
    assert ckpt_lib.latest_step(os.path.join(run_dir, "checkpoints", "res64")) == 2
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == [1, 2]


@pytest.mark.parametrize("name", ["vis_model.safetensors", "vis_model.npz"])
def test_numpy_formats_convert_to_the_same_params(reference_model, tmp_path, name):
    run_dir, files = str(tmp_path / "run"), reference_model["dir"]
    run_dir_lib.write_run_dir(str(files / "model.yaml"), str(files / name), run_dir,
                              str(files / "t5"))
    _, ema = converted_ema(run_dir)
    _, expected = from_reference(reference_model["unet_config"],
                                 reference_model["state_dict"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, ema["unet"], expected)


def test_bad_inputs_name_the_fix(reference_model, tmp_path):
    files = reference_model["dir"]
    yaml_path, t5, npz = (str(files / name) for name in ("model.yaml", "t5", "vis_model.npz"))
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes((files / "vis_model.pth").read_bytes()[:5000])
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
            run_dir_lib.write_run_dir(config_path, checkpoint, str(tmp_path / "out"), t5)
    run_dir_lib.write_run_dir(yaml_path, npz, str(tmp_path / "run"), t5)
    with pytest.raises(FileExistsError, match="another --output"):
        run_dir_lib.write_run_dir(yaml_path, npz, str(tmp_path / "run"), t5)
