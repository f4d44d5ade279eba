"""python -m mdm_jax.sample end to end on the briefly trained demo run the training tests
share (configs/demo.py:smoke, 2 fake devices), with every sampler."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from training_runs import ROOT, env_with_devices, run_to_end

# End to end: real training runs and commands (python -m pytest -m 'not slow' skips them).
pytestmark = pytest.mark.slow

LABELS = "--labels=0,1"


@pytest.fixture(scope="module")
def workdir(uninterrupted):
    return uninterrupted


def sample_command(workdir, output, *extra):
    """Sampling with the config saved in the run's checkpoints (no --config)."""
    return [sys.executable, "-m", "mdm_jax.sample", f"--checkpoint={workdir}",
            f"--output={output}", "--num_steps=3", "--batch_size=2", *extra]


def images(output):
    return [np.asarray(Image.open(os.path.join(output, f"{i:05d}.png"))) for i in range(2)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_each_sampler_writes_one_png_per_sample_and_the_level_grid(workdir, tmp_path, sampler):
    output = str(tmp_path / sampler)
    run_to_end(sample_command(workdir, output, LABELS, f"--sampler={sampler}",
                              "--guidance=2"))
    assert sorted(os.listdir(output)) == ["00000.png", "00001.png", "grid.png"]
    for image in images(output):
        assert image.shape == (64, 64, 3)  # the highest level of the last stage (res64)
    # A row per sample: its 64² level and its 32² level scaled up, side by side.
    assert np.asarray(Image.open(os.path.join(output, "grid.png"))).shape == (128, 128, 3)


def test_the_seed_decides_the_images(workdir, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        output = str(tmp_path / name)
        run_to_end(sample_command(workdir, output, LABELS, f"--seed={seed}"))  # ddpm
        runs[name] = images(output)
    for same, other in zip(runs["a"], runs["b"]):
        np.testing.assert_array_equal(same, other)
    assert all(np.any(a != c) for a, c in zip(runs["a"], runs["c"]))


def test_the_device_count_does_not_change_the_images(workdir, tmp_path):
    """The noise is drawn inside the program from the seed whatever the batch's layout,
    so one device and a batch split over four give the same images."""
    runs = []
    for devices in (1, 4):
        output = str(tmp_path / str(devices))
        run_to_end(sample_command(workdir, output, LABELS, "--sampler=dpm++", "--batch_size=4",
                                  "--num_samples=4", "--guidance=2"),
                   env=env_with_devices(devices))
        runs.append([np.asarray(Image.open(os.path.join(output, f"{i:05d}.png")))
                     for i in range(4)])
    for one, four in zip(*runs):
        np.testing.assert_array_equal(one, four)


def test_a_config_file_with_overrides_replaces_the_saved_one(workdir, tmp_path):
    # configs/from_checkpoint.py reads the saved config; execution settings may change.
    output = str(tmp_path / "bf16")
    run_to_end(sample_command(workdir, output, LABELS,
                              f"--config=configs/from_checkpoint.py:{workdir}",
                              "--config.model.dtype=bfloat16"))
    assert images(output)[0].shape == (64, 64, 3)


def test_an_earlier_stage_and_wrong_inputs_name_the_fix(workdir, tmp_path):
    output = str(tmp_path / "res32")
    run_to_end(sample_command(workdir, output, LABELS, "--stage=res32", "--sampler=ddim"))
    assert images(output)[0].shape == (32, 32, 3)
    for extra, message in (
            (["--prompt=a red circle"], "class-conditional: pass --labels"),
            (["--labels=0,99"], "outside"),
            ([LABELS, "--batch_size=3"], "multiple of the 2 devices"),
            ([LABELS, "--config=configs/demo.py:smoke", "--config.model.num_classes=3"],
             "pass the --config.model")):
        result = subprocess.run(sample_command(workdir, str(tmp_path / "x"), *extra), cwd=ROOT,
                                env=env_with_devices(2), capture_output=True, text=True,
                                timeout=600)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr[-2000:])
