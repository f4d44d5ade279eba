"""Where XLA's GPU compile of a program spends its time, from XLA's own scoped timers, as
one JSON line: the HLO passes summed by name, and the compiler's phases.

    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=gpu_compiler=1,hlo_pass_pipeline=1,\
compile_module_to_llvm_ir=1,nvptx_compiler=1 python -m mdm_jax.compile_for \
        --config=configs/cc12m_64.py --topology=h200 --batch_size=32 ... 2> compile.log
    python -m benchmarks.compile_timers --log=compile.log --program=jit_train_step

Works for a compile on a GPU host and for one for a described card (no GPU: then nothing
is autotuned on a device, but the autotuner still compiles its candidates). Times are
per thread: the backend's IR emission and ptxas run in parallel threads, so their sums
can exceed the phase's wall time.
"""
import collections
import json
import re

from absl import app, flags

flags.DEFINE_string("log", None, "stderr of the compiling process, with the timers on.")
flags.DEFINE_string("program", "jit_train_step", "The program's name in the timers.")
flags.DEFINE_integer("top", 8, "How many HLO passes to list.")
flags.mark_flag_as_required("log")
FLAGS = flags.FLAGS

_TIMER = re.compile(r"\] (.*?) time: .*?\((\d+) us\)")
# The phases' timers name the program; each fires once per compile of it.
PHASES = {"hlo_passes_s": "GpuCompiler::RunHloPasses for {}",
          "backend_s": "GpuCompiler::RunBackend for {}"}
# Timers that fire once per kernel; their last line's cumulative value is the sum.
PER_KERNEL = {"ir_emission_thread_s": "GpuCompiler::RunBackend - IR emission for {}",
              "ptxas_thread_s": "NVPTXCompiler::CompileTargetBinary - PtxToCubin for {}"}


def summarize(lines, program, top):
    """The summary of one log's timer lines for `program`. Pass timers do not name their
    program: those since the previous GPU program's backend finished, up to `program`'s
    RunHloPasses timer, are its (small CPU programs' passes before it take microseconds).
    """
    passes, summary, done = collections.Counter(), {}, False
    for line in lines:
        match = _TIMER.search(line)
        if not match:
            continue
        name, seconds = match.group(1), int(match.group(2)) / 1e6
        if name.startswith("HLO pass: ") and not done:
            passes[name[len("HLO pass: "):]] += seconds
        elif name.startswith("GpuCompiler::RunBackend for ") and not done:
            passes.clear()  # another program's compile ended
        for key, pattern in PHASES.items():
            if name == pattern.format(program):
                summary[key] = round(seconds, 2)
                done = True
        for key, pattern in PER_KERNEL.items():
            cumulative = re.search(r"cumulative: ([\d.]+) (ms|s)\b", line)
            if name.startswith(pattern.format(program)) and cumulative:
                value = float(cumulative.group(1))
                summary[key] = round(value / 1000 if cumulative.group(2) == "ms" else value, 2)
    summary["hlo_passes_top_s"] = {name: round(s, 2) for name, s in passes.most_common(top)}
    return summary


def main(argv):
    del argv
    with open(FLAGS.log) as f:
        print(json.dumps({"program": FLAGS.program,
                          **summarize(f, FLAGS.program, FLAGS.top)}), flush=True)


if __name__ == "__main__":
    app.run(main)
