"""The training entrypoint end to end, in subprocesses: resume, preemption, two processes,
growth, text encoders.

Every run uses configs/demo.py:smoke (a few steps per stage, both stages, growth between
them) on 2 fake CPU devices (the two-process test: 1 per process against 2 in one),
logging and checkpointing every step (see training_runs.py).
"""
import glob
import json
import os
import shutil
import signal
import subprocess

import pytest

from tiny_t5 import write_tiny_t5
from training_runs import (
    NO_GRIDS,
    ROOT,
    env_with_devices,
    free_port,
    losses,
    run_to_end,
    smoke_config,
    start,
    train_command,
    wait_for_step,
)

# End to end: real training runs and commands (python -m pytest -m 'not slow' skips them).
pytestmark = pytest.mark.slow


def test_full_run_trains_both_stages_and_writes_samples(uninterrupted):
    steps = losses(uninterrupted)
    assert sorted(steps) == list(range(1, 10))  # 6 steps at 32², then 3 at 64²
    for stage, last in (("res32", 6), ("res64", 3)):
        assert os.path.isdir(os.path.join(uninterrupted, "checkpoints", stage, str(last)))
        assert os.path.exists(os.path.join(uninterrupted, "samples",
                                           f"{stage}_step{last:07d}.png"))
    with open(os.path.join(uninterrupted, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert {"mse_level0", "mse_level1", "grad_norm", "images_per_s_per_chip",
            "learning_rate"} <= set(rows[-1])
    assert any(k.startswith("data/") for k in rows[-1])
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(os.path.join(uninterrupted, "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 10))
    assert [e.step for e in events.Images("samples/res64")] == [9]


def test_resume_after_sigkill_is_bit_identical(tmp_path, data_dir, uninterrupted):
    workdir = str(tmp_path)
    process = start(train_command(workdir, data_dir, NO_GRIDS))
    wait_for_step(workdir, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(losses(workdir))
    assert killed_at < 9
    run_to_end(train_command(workdir, data_dir, NO_GRIDS))
    resumed, reference = losses(workdir), losses(uninterrupted)
    assert sorted(resumed) == sorted(reference)
    for step in range(killed_at + 1, 10):
        assert resumed[step] == reference[step], step  # bit-identical


def test_sigterm_saves_the_current_step_and_exits_as_preempted(tmp_path, data_dir):
    workdir = str(tmp_path)
    command = train_command(workdir, data_dir, "--config.stages.res32.steps=500",
                            "--config.checkpoint_every=100")
    console = tmp_path / "console.txt"
    with open(console, "w") as log:
        process = start(command, log=log)
        wait_for_step(workdir, 2, process)
        process.send_signal(signal.SIGTERM)
        # Not a finished run's 0 and "Done:": a scheduler can tell it to run again.
        assert process.wait(timeout=300) == 75
    assert "Preempted: saved step" in console.read_text()
    assert not os.path.exists(os.path.join(workdir, "lock"))
    last_logged = max(losses(workdir))
    checkpoints = os.listdir(os.path.join(workdir, "checkpoints", "res32"))
    steps = sorted(int(c) for c in checkpoints if c.isdigit())
    assert steps[-1] == last_logged < 500
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "res64"))


def test_two_processes_train_like_one_and_resume_when_one_is_killed(tmp_path, data_dir,
                                                                    uninterrupted):
    """Two jax.distributed processes with 1 CPU device each: process 1 is killed (SIGKILL)
    after step 3 of res32, the job is stopped and started again, as a scheduler restarts
    it, and resumes on both from the last checkpoint. The losses are the shared run's
    (one process, 2 devices), step for step, through both stages and the growth between."""
    two = str(tmp_path / "two")

    def launch():
        port = free_port()
        return [start(train_command(two, data_dir, NO_GRIDS, "--config.checkpoint_every=2",
                                    f"--coordinator_address=localhost:{port}",
                                    "--num_processes=2", f"--process_id={i}"),
                      env=env_with_devices(1))
                for i in range(2)]
    processes = launch()
    wait_for_step(two, 3, processes[0])
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait()
    try:  # process 0 can't go on alone: it fails or waits on its partner
        processes[0].wait(timeout=30)
    except subprocess.TimeoutExpired:
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait()
    saved = sorted(int(c) for c in os.listdir(os.path.join(two, "checkpoints", "res32"))
                   if c.isdigit())
    assert saved  # the restart resumes from the last of these
    for p in launch():
        assert p.wait(timeout=900) == 0
    one_losses, two_losses = losses(uninterrupted), losses(two)
    assert sorted(two_losses) == sorted(one_losses) == list(range(1, 10))
    for step in one_losses:
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-5, abs=1e-6), step

SHORT = ["--config.stages.res32.steps=2", "--config.stages.res64.steps=1",
         "--config.checkpoint_every=10"]
TEXT_WIDTH = 64


def test_trainable_text_encoder_trains_end_to_end(tmp_path, data_dir):
    """The small encoder's params join the train state and survive growth. (The run also
    traces its second step for TensorBoard's profile plugin.)"""
    workdir = str(tmp_path)
    run_to_end(train_command(
        workdir, data_dir, *SHORT, "--config.profile_steps=1",
        "--config.text.kind=small", "--config.text.max_length=16",
        f"--config.text.small.width={TEXT_WIDTH}", "--config.text.small.depth=1",
        "--config.text.small.num_heads=4",
        f"--config.model.conditioning_feature_dim={TEXT_WIDTH}",
        "--config.sample.prompts=('a red circle',)"))
    assert sorted(losses(workdir)) == [1, 2, 3]
    assert os.path.exists(os.path.join(workdir, "samples", "res64_step0000001.png"))
    # One trace per stage (res64 has no second step to trace).
    traces = glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*",
                                    "*.xplane.pb"))
    assert len(traces) == 1, traces


def test_precomputed_text_embeddings_train_end_to_end(tmp_path, data_dir, uninterrupted):
    from mdm_jax.conditioning.precompute import precompute_embeddings
    from mdm_jax.data import counters, records, sources, transforms
    from mdm_jax.models import text
    data = smoke_config().data  # the data set the run below trains on (uninterrupted built it)
    data.data_dir = data_dir
    source, info = sources.open_source(data)
    captions = [transforms.decode_caption(source[i][records.CAPTION], counters.zeros())
                for i in range(len(source))]
    # A tiny random T5 (width 32, its own sentencepiece model): the features' source
    # doesn't matter to the run, and T5-small's encoding of every caption costs a minute.
    encoder = text.text_encoder_config(kind="t5", max_length=16)
    encoder.t5.checkpoint_dir = write_tiny_t5(str(tmp_path / "t5"), captions)
    output = str(tmp_path / "embeddings")
    precompute_embeddings(captions, encoder, output, batch_size=64)
    workdir = str(tmp_path / "run")
    run_to_end(train_command(
        workdir, data_dir, *SHORT, "--config.text.kind=precomputed",
        f"--config.text.precomputed_dir={output}", "--config.text.max_length=16",
        "--config.model.conditioning_feature_dim=32", NO_GRIDS))
    assert sorted(losses(workdir)) == [1, 2, 3]


def test_grow_command_puts_the_old_stage_inside_the_new_one(tmp_path, data_dir, uninterrupted):
    import flax
    import jax
    import numpy as np

    from mdm_jax.conditioning.text import TextConditioning
    from mdm_jax.parallel import sharding
    from mdm_jax.runs import checkpoints, growth
    from mdm_jax.runs.stages import fresh_params, plan_stages
    config = smoke_config()
    config.data.data_dir = data_dir
    old_dir = os.path.join(uninterrupted, "checkpoints", "res32")
    new_dir = growth.write_grown_checkpoint(config, "res64", old_dir, str(tmp_path))

    stages = plan_stages(config)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.DEFAULT_RULES
    text = TextConditioning.create(config, mesh, rules)
    old_params, old_ema = growth.previous_params(old_dir, stages[0], text, mesh, rules, 0)
    new_target = sharding.abstract_with_shardings(
        lambda: {"params": fresh_params(stages[1], text, 0),
                 "ema_params": fresh_params(stages[1], text, 0)}, mesh, rules)
    new, step = checkpoints.restore_params(new_dir, new_target)
    assert step == 0
    for old, grown in ((old_params, new["params"]), (old_ema, new["ema_params"])):
        flat_old = flax.traverse_util.flatten_dict(jax.device_get(old["unet"]))
        flat_new = flax.traverse_util.flatten_dict(jax.device_get(grown["unet"]["inner_unet"]))
        assert flat_old.keys() == flat_new.keys()
        for key in flat_old:
            np.testing.assert_array_equal(flat_old[key], flat_new[key])
    # Growing from a checkpoint of the wrong stage names the mismatch.
    with pytest.raises(ValueError, match=r"stage 'res64' with 2 level\(s\).*needs one with 1"):
        growth.write_grown_checkpoint(
            config, "res64", os.path.join(uninterrupted, "checkpoints", "res64"),
            str(tmp_path / "again"))


def test_resume_with_other_worker_count_names_the_fix(uninterrupted, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted, workdir)  # the shared run stays as it was
    result = subprocess.run(
        train_command(workdir, data_dir, "--config.stages.res64.steps=5",
                      "--config.data.num_workers=1"),
        cwd=ROOT, env=env_with_devices(2), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "--config.data.num_workers=0" in result.stderr
