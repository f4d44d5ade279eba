"""python -m mdm_jax.evaluate end to end in subprocesses, and evaluation during training.

Uses the briefly trained demo run the training tests share (`uninterrupted`,
configs/demo.py:smoke on 2 fake CPU devices) and the shapes data set it built in
`data_dir`. The model is barely trained, so its judge accuracy is only checked to be a
share; rendered scenes in an --images folder check that the number means something.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import shapes_render
from mdm_jax.evaluation import fid
from mdm_jax.evaluation import judge as judge_lib
from training_runs import NO_GRIDS, ROOT, env_with_devices, run_to_end, train_command

# End to end: real training runs and commands (python -m pytest -m 'not slow' skips them).
pytestmark = pytest.mark.slow

SMOKE = "configs/demo.py:smoke"
NUM_SAMPLES = 8


def evaluate_command(*flags):
    return [sys.executable, "-m", "mdm_jax.evaluate", *flags]


def run(*flags):
    return subprocess.run(evaluate_command(*flags), cwd=ROOT, env=env_with_devices(2),
                          capture_output=True, text=True, timeout=600)


def succeed(*flags):
    result = run(*flags)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(uninterrupted, data_dir, tmp_path_factory):
    """Judge statistics of 32 images of the smoke data set (built by the training run)."""
    assert os.path.isdir(os.path.join(data_dir, "mdm_shapes"))
    directory = str(tmp_path_factory.mktemp("reference"))
    result = succeed(f"--write_reference={directory}", f"--config={SMOKE}",
                     f"--config.data.data_dir={data_dir}", "--num_reference=32")
    assert "Wrote reference statistics (judge) of 32 shapes/train images" in result.stdout
    return directory


@pytest.fixture(scope="module")
def evaluated(uninterrupted, reference, tmp_path_factory):
    """(output folder, stdout) of evaluating the trained run's samples (2 steps)."""
    output = str(tmp_path_factory.mktemp("evaluated"))
    result = succeed(f"--checkpoint={uninterrupted}", f"--num_samples={NUM_SAMPLES}",
                     f"--batch_size={NUM_SAMPLES}", "--num_steps=2", f"--output={output}",
                     f"--reference={reference}")
    return output, result.stdout


def read_report(output):
    with open(os.path.join(output, "report.json")) as f:
        return json.load(f)


def test_write_reference_writes_judge_statistics(reference):
    assert sorted(os.listdir(reference)) == ["judge.npz", "reference.json"]
    with open(os.path.join(reference, "reference.json")) as f:
        info = json.load(f)
    assert info["feature_spaces"] == ["judge"]  # no Inception weights given
    assert (info["dataset"], info["split"], info["image_size"], info["num_images"]) == (
        "shapes", "train", 64, 32)
    mu, sigma = fid.load_statistics(os.path.join(reference, "judge.npz"))
    assert mu.shape == (judge_lib.FEATURES,)
    assert sigma.shape == (judge_lib.FEATURES, judge_lib.FEATURES)
    assert np.all(np.isfinite(sigma)) and np.allclose(sigma, sigma.T)
    assert np.any(mu != 0)


def test_a_checkpoints_samples_are_judged_and_shown_in_a_grid(evaluated, uninterrupted,
                                                               reference):
    output, stdout = evaluated
    report = read_report(output)
    assert report["num_images"] == NUM_SAMPLES
    assert 0.0 <= report["judge_accuracy"] <= 1.0
    by_attribute = report["judge_accuracy_by_attribute"]
    assert set(by_attribute) == {"shape", "colour"}  # what a class label names
    assert all(0.0 <= v <= 1.0 for v in by_attribute.values())
    assert report["judge_accuracy"] <= min(by_attribute.values())
    settings = report["settings"]
    assert settings["num_samples"] == NUM_SAMPLES
    assert settings["num_steps"] == 2 and settings["sampler"] == "dpm++"
    assert settings["checkpoint"] == os.path.abspath(uninterrupted)
    assert settings["reference"] == reference
    # One row per sample: its 64² level, then its 32² level scaled up to 64².
    grid = np.asarray(Image.open(os.path.join(output, "grid.png")))
    assert grid.shape == (NUM_SAMPLES * 64, 2 * 64, 3)
    assert "Judged:" in stdout and f"of {NUM_SAMPLES} samples" in stdout
    assert json.loads(stdout.splitlines()[0])["num_images"] == NUM_SAMPLES


def test_judge_fid_against_the_reference_statistics(evaluated):
    report = read_report(evaluated[0])
    assert np.isfinite(report["judge_fid"]) and report["judge_fid"] >= 0
    assert "fid" not in report  # no Inception weights were given


def scene_of_label(label, start=0):
    """A demo-variant scene (one medium-or-large shape) whose class label is `label`."""
    for index in range(start, start + 10_000):
        scene = shapes_render.sample_scene(7, index, max_objects=1, min_size="medium")
        if scene.label == label:
            return scene
    raise AssertionError(f"no scene of label {label}")


@pytest.fixture(scope="module")
def rendered_folder(tmp_path_factory):
    """Renders of one scene per label 0..7, named in label order."""
    folder = tmp_path_factory.mktemp("rendered")
    for label in range(NUM_SAMPLES):
        Image.fromarray(shapes_render.render(scene_of_label(label), 64)).save(
            folder / f"{label:05d}.png")
    return str(folder)


def test_a_folder_of_rendered_scenes_is_judged_right(rendered_folder, tmp_path):
    labels = ",".join(str(i) for i in range(NUM_SAMPLES))
    right = str(tmp_path / "right")
    result = succeed(f"--images={rendered_folder}", f"--labels={labels}", "--judge=packaged",
                     f"--output={right}")
    report = read_report(right)
    assert report["num_images"] == NUM_SAMPLES
    assert report["judge_accuracy"] == 1.0
    assert report["settings"]["images"] == rendered_folder
    assert "Judged: 100.0% of 8 samples" in result.stdout
    # The folder's images themselves make the grid, one a row.
    assert np.asarray(Image.open(os.path.join(right, "grid.png"))).shape == (8 * 64, 64, 3)

    # The same colours on squares (label + 10): every shape is judged wrong.
    wrong_labels = ",".join(str(i + len(shapes_render.COLOURS)) for i in range(NUM_SAMPLES))
    wrong = str(tmp_path / "wrong")
    succeed(f"--images={rendered_folder}", f"--labels={wrong_labels}", "--judge=packaged",
            f"--output={wrong}")
    report = read_report(wrong)
    assert report["judge_accuracy"] == 0.0
    assert report["judge_accuracy_by_attribute"] == {"shape": 0.0, "colour": 1.0}


@pytest.mark.parametrize("case", ["no_checkpoint", "no_statistics", "wrong_inception"])
def test_bad_input_gives_one_message_naming_the_fix(case, rendered_folder, tmp_path):
    output = f"--output={tmp_path / 'out'}"
    images = f"--images={rendered_folder}"
    if case == "no_checkpoint":
        flags = ["--checkpoint=/nonexistent", output]
        words = ["No checkpoint under /nonexistent/checkpoints", "training run's workdir"]
    elif case == "no_statistics":
        flags = [images, "--reference=/nonexistent/stats.npz", output]
        words = ["No reference statistics at /nonexistent/stats.npz", "--write_reference=DIR"]
    else:
        weights = str(tmp_path / "weights.npz")
        np.savez(weights, foo=np.zeros(3))
        flags = [images, "--labels=0", f"--inception_weights={weights}", output]
        words = ["is not the FID Inception weights file", "unexpected tensors: foo",
                 "pt_inception-2015-12-05-6726825d.pth", "mdm_jax.convert_inception"]
    result = run(*flags)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("evaluate: ")]
    assert len(message) == 1, result.stderr[-3000:]
    for word in words:
        assert word in message[0], (word, message[0])
    assert not os.path.exists(tmp_path / "out" / "report.json")


def test_evaluation_during_training_logs_judge_scalars(uninterrupted, data_dir, tmp_path):
    """One more step of the trained run's last stage (3 -> 4), evaluated at its end."""
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted, workdir)
    run_to_end(train_command(
        workdir, data_dir, "--config.stages.res64.steps=4", NO_GRIDS,
        "--config.eval_every=2", f"--config.eval.num_samples={NUM_SAMPLES}",
        f"--config.eval.batch_size={NUM_SAMPLES}", "--config.eval.num_steps=2",
        "--config.eval.num_reference=16"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evaluations = [row for row in rows if any(k.startswith("eval/") for k in row)]
    # res64 step 4 is step 6 + 4 overall; the copied steps 1-9 were never evaluated.
    assert [row["step"] for row in evaluations] == [10]
    scalars = evaluations[0]
    assert 0.0 <= scalars["eval/judge_accuracy"] <= 1.0
    assert np.isfinite(scalars["eval/judge_fid"]) and scalars["eval/judge_fid"] >= 0
    assert {"eval/judge_shape", "eval/judge_colour", "eval/seconds"} <= set(scalars)
    assert scalars["eval/num_images"] == NUM_SAMPLES
    # Its reference statistics were made once from the run's data set.
    with open(os.path.join(workdir, "eval_reference", "64px", "reference.json")) as f:
        info = json.load(f)
    assert info["feature_spaces"] == ["judge"] and info["num_images"] == 16
    assert max(row["step"] for row in rows if "loss" in row) == 10
