"""Curves and a table from launch/experiments.py's output (needs the `plots` extra).

    python launch/plot_experiments.py --input=/tmp/experiments --output=docs/experiments

Writes OUTPUT_steps.png (judge accuracy and judge-FID against 64²-stage steps),
OUTPUT_seconds.png (the same against training seconds, from timing.json's step times, if
the timing phase ran) and prints a markdown table of the final and best values per arm.
"""
import argparse
import collections
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = (("judge_accuracy", "judge accuracy (shape and colour)"),
           ("judge_fid", "judge-FID (lower is better)"))


def load(directory):
    runs = collections.defaultdict(list)
    with open(os.path.join(directory, "results.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            runs[record["arm"]].append(record)
    timing_path = os.path.join(directory, "timing.json")
    timing = None  # the timing phase may not have run: then only the steps plot
    if os.path.isfile(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    return runs, timing


def step_times(arm, timing):
    """Seconds per step of each of an arm's stages: progressive's 32² then 64² stage; the
    nested arms' one stage runs progressive's 64² program (no_nested_loss sums fewer level
    losses, which costs next to nothing)."""
    kind = arm.removesuffix("_seed1")
    if kind == "progressive":
        return timing["progressive"]
    if kind in ("nested", "no_nested_loss"):
        return timing["progressive"][1:]
    return timing[kind]


def seconds(record, arm, timing, low_res_steps):
    times = step_times(arm, timing)
    if len(times) == 2:
        low, high = times
        return min(record["step"], low_res_steps) * low + max(record["high_res_step"], 0) * high
    return record["step"] * times[0]


def plot(runs, timing, low_res_steps, x_axis, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (key, title) in zip(axes, METRICS):
        for arm, records in sorted(runs.items()):
            if x_axis == "steps":
                points = [(r["high_res_step"], r[key]) for r in records if r["high_res_step"] > 0]
            else:
                points = [(seconds(r, arm, timing, low_res_steps), r[key]) for r in records
                          if r["high_res_step"] > 0]
            style = "--" if arm.endswith("_seed1") else "-"
            ax.plot(*zip(*points), style, marker="o", markersize=3, label=arm)
        ax.set_title(title)
        ax.set_xlabel("64² training steps" if x_axis == "steps" else
                      "training seconds on one H200 (step times measured alone)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


def table(runs, timing, low_res_steps):
    lines = ["| arm | 64² steps | training s | judge accuracy (final / best) | "
             "shape / colour (final) | judge-FID (final / best) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm, records in sorted(runs.items()):
        high = [r for r in records if r["high_res_step"] > 0]
        last = high[-1]
        clock = ("not measured" if timing is None else
                 f"{seconds(last, arm, timing, low_res_steps):.0f}")
        lines.append(
            f"| {arm} | {last['high_res_step']} | {clock} | "
            f"{last['judge_accuracy']:.3f} / {max(r['judge_accuracy'] for r in high):.3f} | "
            f"{last['judge_shape']:.3f} / {last['judge_colour']:.3f} | "
            f"{last['judge_fid']:.0f} / {min(r['judge_fid'] for r in high):.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True, help="path prefix of the PNGs")
    parser.add_argument("--low_res_steps", type=int, default=2000)
    args = parser.parse_args()
    runs, timing = load(args.input)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot(runs, timing, args.low_res_steps, "steps", args.output + "_steps.png")
    if timing is not None:
        plot(runs, timing, args.low_res_steps, "seconds", args.output + "_seconds.png")
    print(table(runs, timing, args.low_res_steps))


if __name__ == "__main__":
    main()
