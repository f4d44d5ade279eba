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


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(")


def instructions(hlo_text):
    """HLO instruction name -> what it is: op_name (a fusion without one of its own takes
    the first op_name inside the computation it calls: XLA's layout copies have none at
    their root), and a short description (opcode, result shape, the called root's opcode).
    """
    found, roots, inner_names, current = {}, {}, {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        is_root, name, shape, opcode = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        kind = re.search(r"kind=(\w+)", line)
        found[name] = {"op_name": op_name.group(1) if op_name else "",
                       "calls": calls.group(1) if calls else None,
                       "what": " ".join(filter(None, [opcode, kind and kind.group(1),
                                                      shape.split("{")[0]]))}
        if is_root:
            roots[current] = opcode
        if op_name:
            inner_names.setdefault(current, op_name.group(1))
    for info in found.values():
        called = info.pop("calls")
        if called:
            info["what"] += f" root={roots.get(called, '?')}"
            if not info["op_name"]:
                info["op_name"] = inner_names.get(called, "")
    return found


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
    program = {}
    if FLAGS.hlo:
        with open(FLAGS.hlo) as f:
            program = instructions(f.read())
    pids = {e["pid"]: e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
    by_op, by_part, by_kind = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0.0
    for e in events:
        if e.get("ph") != "X" or "GPU" not in pids.get(e.get("pid"), ""):
            continue
        args = e.get("args", {})
        op = args.get("hlo_op") or e.get("name", "?")
        seconds = e["dur"] / 1e6 / FLAGS.steps
        by_op[op] += seconds
        info = program.get(op, {})
        by_part[part_of(info.get("op_name", op))] += seconds
        # The kind of kernel without its shape: "fusion kLoop root=transpose", "custom-call".
        by_kind[" ".join(w for w in info.get("what", "?").split() if "[" not in w)] += seconds
        total += seconds
    print(json.dumps({"gpu_kernel_s_per_step": total}))
    for part, s in by_part.most_common():
        print(json.dumps({"part": part, "s_per_step": s, "share": s / total}))
    for kind, s in by_kind.most_common(FLAGS.top):
        print(json.dumps({"kind": kind, "s_per_step": s, "share": s / total}))
    for op, s in by_op.most_common(FLAGS.top):
        info = program.get(op, {})
        print(json.dumps({"hlo_op": op, "s_per_step": s, "share": s / total,
                          "what": info.get("what", ""),
                          "op_name": info.get("op_name", "")[-160:]}))


if __name__ == "__main__":
    app.run(main)
