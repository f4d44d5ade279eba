"""The paper's training claims at small scale, on one-shape scenes (docs/experiments.md).

    python launch/experiments.py --output=/tmp/experiments

Arms (all at batch --batch_size, the same seed, --high_res_steps steps at 64²):
  progressive      the 32² UNet for --low_res_steps, then grown into the 32² ⊂ 64² nested
                   model (the demo's model and recipe)
  nested           the nested model trained from scratch
  single           a one-level 64² UNet of about the nested model's size
  no_nested_loss   the nested model from scratch with only the 64² loss (use_double_loss off)
  progressive_seed1, nested_seed1   repeats with seed 1, for the noise of the measure

Every --eval_every steps each run samples --eval_samples images (DPM-Solver++, 25 steps,
the demo's guidance, every class in turn) and the shapes judge scores them (accuracy of
shape and colour, judge-FID against the data set). Arms run as concurrent processes on one
GPU (their step times would be distorted), so training seconds are measured afterwards:
each distinct stage program alone for --timing_steps steps (progressive's two stages, the
single UNet); a run's clock is its steps times those step times. Writes
OUTPUT/results.jsonl (one line per evaluation) and OUTPUT/timing.json;
launch/plot_experiments.py makes the curves and the table.
"""
import argparse
import json
import os
import runpy
import subprocess
import sys

import numpy as np

ARMS = ("progressive", "nested", "single", "no_nested_loss", "progressive_seed1",
        "nested_seed1")


def arm_config(arm, args, steps=None, eval_every=None):
    """The demo config changed into one arm (steps: override every stage's steps)."""
    from mdm_jax.models import config as model_config  # noqa: PLC0415

    demo = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
    cfg = demo["get_config"]()
    cfg.seed = 1 if arm.endswith("_seed1") else 0
    kind = arm.removesuffix("_seed1")
    cfg.data.data_dir = args.data_dir
    # The data the recorded runs used (docs/experiments.md), whatever the demo's is now:
    # one shape a scene, medium or large, anywhere, rotated, on textured backgrounds.
    cfg.data.shapes.update(max_objects=1, min_size="medium", plain_background=False,
                           centred=False, upright=False)
    cfg.model.class_factors = None  # one embedding table of the 50 classes, as then
    cfg.data.num_workers = args.workers
    cfg.sample.num_samples = 0
    cfg.checkpoint_every = 100_000
    cfg.log_every = 50
    cfg.eval_every = eval_every if eval_every is not None else args.eval_every
    cfg.eval.num_samples = args.eval_samples
    cfg.eval.batch_size = args.eval_samples
    cfg.eval.num_reference = 2000
    cfg.eval.guidance = 4.0
    # The rates the recorded runs used (docs/experiments.md), whatever the demo's are now.
    high = cfg.stages.res64
    high.steps = steps or args.high_res_steps
    high.global_batch_size = args.batch_size
    high.learning_rate = 5e-4
    cfg.stages.res32.steps = steps or args.low_res_steps
    cfg.stages.res32.global_batch_size = args.batch_size
    cfg.stages.res32.learning_rate = 1e-3
    if kind == "progressive":
        return cfg
    low = cfg.stages.res32
    with cfg.stages.unlocked():
        del cfg.stages["res32"]
    # From scratch: the low-res stage's rate and warmup, as that stage starts from scratch.
    high.learning_rate = low.learning_rate
    high.warmup_steps = low.warmup_steps
    if kind == "no_nested_loss":
        cfg.diffusion.use_double_loss = False
    elif kind == "single":
        # One 64² UNet: the nested model's outer widths followed by its inner ones.
        unet = model_config.level_config(
            resolution_channels=[16, 32, 64, 64], num_resnets_per_resolution=[1, 1, 1, 1],
            attention_levels=[3], num_attention_layers=[0, 0, 0, 1], temporal_dim=128,
            num_groups_norm=8, micro_conditioning="")
        cfg.model = model_config.model_config(unet, num_classes=cfg.model.num_classes)
        high.num_levels = 1
        high.multi_res_weights = None
    return cfg


def run_arm(arm, args, workdir, steps=None, eval_every=None):
    from absl import flags  # noqa: PLC0415

    from mdm_jax.training import loop  # noqa: PLC0415 (jax starts here, not in the parent)
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    config = arm_config(arm, args, steps, eval_every)
    import jax  # noqa: PLC0415

    from mdm_jax.models import init_params  # noqa: PLC0415
    n = sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(
        lambda: init_params(config.model, jax.random.key(0), config.data.image_size))))
    print(json.dumps({"arm": arm, "parameters": int(n)}), flush=True)
    loop.train(config, workdir)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def collect(arm, workdir, low_res_steps):
    """One line per evaluation: the arm, its 64²-stage step and the scores."""
    out = []
    progressive = arm.startswith("progressive")
    for record in read_metrics(workdir):
        if "eval/judge_accuracy" not in record:
            continue
        step = record["step"]
        high_step = step - low_res_steps if progressive else step
        out.append({"arm": arm, "step": step, "high_res_step": high_step,
                    "stage": "res64" if high_step > 0 else "res32",
                    **{k.removeprefix("eval/"): v for k, v in record.items()
                       if k.startswith("eval/")}})
    return out


def stage_step_times(workdir, steps_per_stage):
    """[median step_time_s of each stage] of a timing run (each stage steps_per_stage)."""
    times = {}
    for record in read_metrics(workdir):
        if "step_time_s" in record:
            stage = (record["step"] - 1) // steps_per_stage
            times.setdefault(stage, []).append(record["step_time_s"])
    return [float(np.median(times[s])) for s in sorted(times)]


def spawn(arm, args, timing=False):
    """This script for one arm, in its own process (and its own log file)."""
    command = [sys.executable, __file__, f"--run_arm={arm}"] + [
        f"--{k}={v}" for k, v in vars(args).items()
        if k not in ("run_arm", "arms", "phase", "timing")]
    name = arm + ("_timing" if timing else "")
    log = open(os.path.join(args.output, f"{name}.log"), "w")
    return subprocess.Popen(command + (["--timing"] if timing else []), stdout=log,
                            stderr=subprocess.STDOUT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--high_res_steps", type=int, default=3000)
    parser.add_argument("--low_res_steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_samples", type=int, default=500)
    parser.add_argument("--timing_steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data_dir", default="/tmp/experiments_data")
    parser.add_argument("--phase", default="all", choices=("all", "train", "time"))
    parser.add_argument("--run_arm", default=None)
    parser.add_argument("--timing", action="store_true")
    args = parser.parse_args()
    if args.run_arm:
        name = args.run_arm + ("_timing" if args.timing else "")
        run_arm(args.run_arm, args, os.path.join(args.output, name),
                steps=args.timing_steps if args.timing else None,
                eval_every=0 if args.timing else None)
        return
    os.makedirs(args.output, exist_ok=True)
    arms = args.arms.split(",")
    if args.phase in ("all", "train"):
        # The data set is built once, before the arms start reading it.
        subprocess.run([sys.executable, "-m", "mdm_jax.build_data", "--data.dataset=shapes",
                        f"--data.data_dir={args.data_dir}", "--data.shapes.image_size=64",
                        "--data.shapes.num_examples=10000", "--data.shapes.max_objects=1",
                        "--data.shapes.min_size=medium"],
                       check=True)
        runs = [spawn(arm, args) for arm in arms]
        failed = [arm for arm, p in zip(arms, runs) if p.wait() != 0]
        with open(os.path.join(args.output, "results.jsonl"), "w") as f:
            for arm in arms:
                if arm not in failed:
                    for line in collect(arm, os.path.join(args.output, arm),
                                        args.low_res_steps):
                        f.write(json.dumps(line) + "\n")
        if failed:
            sys.exit(f"Arms failed: {failed} (see their logs in {args.output}).")
    if args.phase in ("all", "time"):
        timing = {}
        # The nested arms' one stage is progressive's second stage (no_nested_loss differs
        # only in which level losses are summed, so it is timed with it too).
        for arm in ("progressive", "single"):
            if arm in arms:
                if spawn(arm, args, timing=True).wait() != 0:
                    sys.exit(f"Timing run of {arm} failed.")
                timing[arm] = stage_step_times(os.path.join(args.output, f"{arm}_timing"),
                                               args.timing_steps)
        with open(os.path.join(args.output, "timing.json"), "w") as f:
            json.dump(timing, f, indent=2)
        print(json.dumps(timing))


if __name__ == "__main__":
    main()
