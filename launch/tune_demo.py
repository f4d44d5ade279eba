"""Compares demo recipes by the judged score of their samples (how configs/demo.py was chosen).

    python launch/tune_demo.py --output=/tmp/tune --recipes=current,plain --guidance=2,4,7
    python launch/tune_demo.py --output=/tmp/tune_gpu --recipes=posed --steps_scale=3 \
        --config.stages.res32.global_batch_size=128 --config.stages.res64.global_batch_size=128

Each recipe is configs/demo.py with the overrides of BASE (the demo before this
comparison) and then its own in RECIPES; `--steps_scale` multiplies every stage's steps.
The recipes train as concurrent processes (on a GPU: they share it),
each with the real commands, `python -m mdm_jax.train` then `python -m mdm_jax.evaluate`
once per guidance scale, and one JSON line a (recipe, guidance) is printed and appended
to OUTPUT/results.jsonl: judged accuracy, shape and colour accuracy, judge-FID.
Step counts are what the demo affords on a 2-core CPU in about ten minutes of training
(32² batch 16 at about 0.21 s a step, 64² batch 8 at about 0.25 s; README), so a recipe's
score on a GPU is what the CPU demo would score, up to the seed.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

# The demo before this comparison, at the CPU's step budget: every recipe starts from it,
# whatever configs/demo.py holds now. class_factors=(50,) is one table of the 50 classes
# (the same function as None, which a command-line override cannot give).
BASE = {
    "data.shapes.min_size": "medium", "data.shapes.plain_background": "False",
    "data.shapes.centred": "False", "data.shapes.upright": "False",
    "model.class_factors": "(50,)",
    "stages.res32.steps": "1200", "stages.res64.steps": "1000",
}
PLAIN = {"data.shapes.plain_background": "True"}
LARGE = {"data.shapes.min_size": "large"}
POSED = {"data.shapes.centred": "True", "data.shapes.upright": "True"}
FACTORED = {"model.class_factors": "(5,10)"}
RECIPES = {
    "current": {},
    "plain": PLAIN,
    "plain_large": {**PLAIN, **LARGE},
    "plain_vloss": {**PLAIN, "diffusion.loss_target_type": "v"},
    "plain_lr64": {**PLAIN, "stages.res64.learning_rate": "2e-3"},
    "plain_more32": {**PLAIN, "stages.res32.steps": "2000", "stages.res64.steps": "300"},
    "plain_more64": {**PLAIN, "stages.res32.steps": "600", "stages.res64.steps": "1500"},
    "plain_b32": {**PLAIN, "stages.res32.steps": "600",
                  "stages.res32.global_batch_size": "32"},
    "plain_equal_weights": {**PLAIN, "stages.res64.multi_res_weights": "(1.0,1.0)"},
    "plain_large_vloss_lr64": {**PLAIN, **LARGE, "diffusion.loss_target_type": "v",
                               "stages.res64.learning_rate": "2e-3"},
    "posed_large": {**PLAIN, **LARGE, **POSED},
    "factored": FACTORED,
    "plain_large_factored": {**PLAIN, **LARGE, **FACTORED},
    "posed_large_factored": {**PLAIN, **LARGE, **POSED, **FACTORED},
}


def overrides(name, scale):
    """The recipe's --config flags, every stage's steps multiplied by scale."""
    values = {**BASE, **RECIPES[name]}
    return [f"--config.{key}={int(round(int(value) * scale)) if key.endswith('.steps') else value}"
            for key, value in values.items()]


def arm_script(name, args):
    """The shell commands of one recipe: train, then evaluate at every guidance."""
    workdir = os.path.join(args.output, name)
    python = sys.executable
    train = [python, "-m", "mdm_jax.train", "--config=configs/demo.py", f"--workdir={workdir}",
             f"--config.data.data_dir={args.data_dir}",
             *overrides(name, args.steps_scale), *args.extra]
    commands = [train]
    for guidance in args.guidance.split(","):
        commands.append([python, "-m", "mdm_jax.evaluate", f"--checkpoint={workdir}",
                         f"--num_samples={args.num_samples}", f"--batch_size={args.num_samples}",
                         f"--num_steps={args.num_steps}", f"--guidance={guidance}",
                         f"--output={workdir}/eval_g{guidance}"])
    return " && ".join(shlex.join(c) for c in commands)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--guidance", default="2,4,7")
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--steps_scale", type=float, default=1.0)
    parser.add_argument("--data_dir", default="/tmp/tune_data")
    # Any other --config.* flag is an override given to every recipe.
    args, args.extra = parser.parse_known_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        sys.exit(f"Unknown recipes {unknown}; known: {', '.join(RECIPES)}.")
    os.makedirs(args.output, exist_ok=True)
    # Every variant's data set once, before the recipes start reading them.
    variants = {tuple(o for o in overrides(n, 1) if ".shapes." in o) for n in names}
    for variant in variants:
        subprocess.run([sys.executable, "-m", "mdm_jax.build_data", "--data.dataset=shapes",
                        f"--data.data_dir={args.data_dir}", "--data.shapes.image_size=64",
                        "--data.shapes.num_examples=10000", "--data.shapes.max_objects=1",
                        *(o.replace("--config.", "--", 1) for o in variant)], check=True)
    runs = {}
    for name in names:
        log = open(os.path.join(args.output, f"{name}.log"), "w")
        runs[name] = subprocess.Popen(["bash", "-c", arm_script(name, args)], stdout=log,
                                      stderr=subprocess.STDOUT)
    with open(os.path.join(args.output, "results.jsonl"), "a") as results:
        for name, process in runs.items():
            if process.wait() != 0:
                print(json.dumps({"recipe": name, "failed": True}), flush=True)
                continue
            for guidance in args.guidance.split(","):
                path = os.path.join(args.output, name, f"eval_g{guidance}", "report.json")
                with open(path) as f:
                    report = json.load(f)
                by = report.get("judge_accuracy_by_attribute", {})
                line = {"recipe": name, "guidance": float(guidance),
                        "steps_scale": args.steps_scale,
                        "judge_accuracy": report.get("judge_accuracy"),
                        "shape": by.get("shape"), "colour": by.get("colour"),
                        "judge_fid": report.get("judge_fid")}
                print(json.dumps(line), flush=True)
                results.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
