"""configs/demo_video.py:smoke end to end: the moving shapes clips are generated, the image
stage trains, grows into the temporal level, then into the spatial level; the sample
command writes each clip as an MP4, a GIF and a strip of every level's frames; the grow
command starts a video stage from an image run."""
import json
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from training_runs import COMPILE_CACHE, ROOT, env_with_devices, run_to_end

CONFIG = "configs/demo_video.py:smoke"


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    workdir, data_dir = root / "run", root / "data"
    run_to_end([sys.executable, "-m", "mdm_jax.train", f"--config={CONFIG}",
                f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                f"--config.compile_cache_dir={COMPILE_CACHE}", "--config.sample.num_samples=0"])
    return workdir, data_dir


@pytest.mark.slow
def test_demo_video_trains_every_stage_and_samples_clips(video_run, tmp_path):
    workdir, _ = video_run
    rows = {row["step"]: row for row in map(json.loads, open(workdir / "metrics.jsonl"))}
    # Two steps a stage, global step numbers: the image stage has one level, the temporal
    # stage two, the spatial stage three.
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in rows.values())
    levels = {step: sum(key.startswith("mse_level") for key in row) for step, row in rows.items()}
    assert levels == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}

    output = tmp_path / "clips"
    result = subprocess.run(
        [sys.executable, "-m", "mdm_jax.sample", f"--checkpoint={workdir}",
         "--prompt=a red circle moving left", "--num_samples=2", "--batch_size=2",
         "--num_steps=3", f"--output={output}"],
        cwd=ROOT, env=env_with_devices(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for i in range(2):
        with av.open(str(output / f"{i:05d}.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
        with Image.open(output / f"{i:05d}.gif") as gif:
            assert gif.n_frames == 8 and gif.size == (32, 32)
        # Three rows (levels) of eight 32-pixel frames; the innermost level has one frame,
        # so the rest of its row is black.
        strip = np.asarray(Image.open(output / f"{i:05d}_levels.png"))
        assert strip.shape == (3 * 32, 8 * 32, 3)
        assert strip[64:, 32:].max() == 0 and strip[64:, :32].max() > 0


@pytest.mark.slow
def test_grow_starts_a_video_stage_from_an_image_run(video_run, tmp_path):
    import flax
    import jax

    from mdm_jax.conditioning.text import TextConditioning
    from mdm_jax.parallel import sharding
    from mdm_jax.runs import checkpoints, growth
    from mdm_jax.runs.stages import fresh_params, plan_stages
    from training_runs import load_config

    workdir, data_dir = video_run
    # An image run: the demo's image stage alone.
    image_run = tmp_path / "image_run"
    shutil.copytree(workdir / "checkpoints" / "res16", image_run / "checkpoints" / "res16")
    config = load_config(CONFIG)
    config.data.data_dir = str(data_dir)
    new_dir = growth.write_grown_checkpoint(config, "video16", None, str(tmp_path / "new"),
                                            from_image_run=str(image_run))
    stages = plan_stages(config)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.DEFAULT_RULES
    text = TextConditioning.create(config, mesh, rules)
    old, _ = growth.previous_params(str(image_run / "checkpoints" / "res16"), stages[0], text,
                                    mesh, rules, 0)
    target = sharding.abstract_with_shardings(
        lambda: {"params": fresh_params(stages[1], text, 0),
                 "ema_params": fresh_params(stages[1], text, 0)}, mesh, rules)
    new, step = checkpoints.restore_params(new_dir, target)
    assert step == 0
    flat_old = flax.traverse_util.flatten_dict(jax.device_get(old["unet"]))
    flat_new = flax.traverse_util.flatten_dict(jax.device_get(new["params"]["unet"]))
    for key, value in flat_old.items():
        np.testing.assert_array_equal(flat_new[("inner_unet",) + key], value)
    # The temporal level is fresh: its output conv and adapters start at zero.
    for key in (("conv_out", "kernel"), ("in_adapter", "kernel"), ("out_adapter", "kernel")):
        assert not np.any(flat_new[key])
    # Prompts for sampling: the encoder is traced once, however many calls.
    for prompts in (["a red circle moving left", ""], ["a blue square moving up", "x"]):
        features, _ = text.encode_prompts(new["ema_params"], prompts)
        assert features.shape[:2] == (2, config.text.max_length)
    assert text._encode._cache_size() == 1
    with pytest.raises(ValueError, match="video stage's checkpoint"):
        growth.write_grown_checkpoint(config, "video32", None, str(tmp_path / "again"),
                                      from_image_run=str(workdir))


def test_grid_of_clips_is_each_samples_strips_one_under_the_other():
    from mdm_jax.sampling import images
    rng = np.random.default_rng(0)
    levels = [rng.uniform(-1, 1, (2, 4, 8, 8, 3)), rng.uniform(-1, 1, (2, 4, 4, 4, 3)),
              rng.uniform(-1, 1, (2, 1, 4, 4, 3))]
    grid = images.level_grid(levels)
    assert grid.shape == (2 * 3 * 8, 4 * 8, 3)
    # Sample 1, level 1, frame 2: its 4x4 frame scaled up twice, at row block 4, column 2.
    want = np.repeat(np.repeat(images.to_uint8(levels[1][1, 2]), 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(grid[32:40, 16:24], want)
    assert grid[40:48, 8:].max() == 0  # the one-frame level fills its first column only
