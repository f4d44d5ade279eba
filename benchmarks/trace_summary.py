"""Where a profiled step's device time goes: GPU kernel time from a perfetto trace
(`jax.profiler.trace(dir, create_perfetto_trace=True)`, as bench_train's --profile_dir
writes), grouped by the HLO instruction each kernel ran and by the model part named in
that instruction's op_name (from the compiled program's text), as JSON lines.

    python -m benchmarks.trace_summary --trace_dir=DIR --hlo=DIR/train_step.hlo.txt
"""
import collections
import glob
import gzip
import json
import re

from absl import app, flags

flags.DEFINE_string("trace_dir", None, "Folder that holds the *.trace.json.gz.")
flags.DEFINE_string("hlo", None, "The compiled program's text (Compiled.as_text()).")
flags.DEFINE_integer("steps", 1, "Profiled steps, to report per-step times.")
flags.DEFINE_integer("top", 30, "How many instructions to list.")
FLAGS = flags.FLAGS

# Model parts, matched in order against an instruction's op_name.
PARTS = (("optimizer and EMA", r"^jit\(train_step\)/(?!.*jvp\()"),
         ("attention", r"attention|dot_product|softmax"),
         ("normalisation", r"norm"),
         ("convolution", r"conv"),
         ("dense", r"dot_general|Dense"),
         ("loss and noise", r"multires|loss|random|threefry"))


def op_names(hlo_text):
    """HLO instruction name -> the op_name of its metadata (fusions: their root's)."""
    names = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if match:
            names.setdefault(match.group(1), match.group(2))
    return names


def part_of(op_name):
    for part, pattern in PARTS:
        if re.search(pattern, op_name):
            return part
    return "other"


def main(argv):
    del argv
    (path,) = glob.glob(f"{FLAGS.trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {}
    if FLAGS.hlo:
        with open(FLAGS.hlo) as f:
            names = op_names(f.read())
    pids = {e["pid"]: e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
    by_op, by_part, total = collections.Counter(), collections.Counter(), 0.0
    for e in events:
        if e.get("ph") != "X" or "GPU" not in pids.get(e.get("pid"), ""):
            continue
        args = e.get("args", {})
        op = args.get("hlo_op") or e.get("name", "?")
        seconds = e["dur"] / 1e6 / FLAGS.steps
        by_op[op] += seconds
        by_part[part_of(names.get(op, op))] += seconds
        total += seconds
    print(json.dumps({"gpu_kernel_s_per_step": total}))
    for part, s in by_part.most_common():
        print(json.dumps({"part": part, "s_per_step": s, "share": s / total}))
    for op, s in by_op.most_common(FLAGS.top):
        print(json.dumps({"hlo_op": op, "s_per_step": s, "share": s / total,
                          "op_name": names.get(op, "")[-160:]}))


if __name__ == "__main__":
    app.run(main)
