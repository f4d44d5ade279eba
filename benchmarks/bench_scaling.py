"""Per-device training throughput on 1, 2, 4 and 8 devices of one host, as JSON lines.

    python -m benchmarks.bench_scaling --config=configs/cc12m_64.py --per_device_batch=32 \
        --devices=1,2,4,8 --fsdp=off,on --launch=both -- --text=features \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl

Runs `benchmarks.bench_train` (flags after `--` go to it) at the same per-device batch on
the first n devices, for each n, FSDP off (mesh data=n) and on (fsdp=n), either as one
process driving all n (`--launch=single`) or as n processes of one device each joined
through jax.distributed on localhost (`--launch=per_device`, what SLURM and pods do).
Each line is bench_train's, plus `launch`, `fsdp`, and `scaling`: its images/s per device
over the one-device run's with the same FSDP setting. GPUs are picked with
CUDA_VISIBLE_DEVICES; on a CPU host (`--platform=cpu`, for tests) each process gets fake
devices. NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
"""
import json
import os
import socket
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("config", None, "Config file (as for bench_train).")
flags.DEFINE_integer("per_device_batch", 8, "Examples per device.")
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to run.")
flags.DEFINE_list("fsdp", ["off", "on"], "FSDP settings: off (data=n), on (fsdp=n).")
flags.DEFINE_enum("launch", "single", ["single", "per_device", "both"],
                  "One process for all devices, one per device, or both.")
flags.DEFINE_enum("platform", "gpu", ["gpu", "cpu"], "Where the devices are.")
flags.DEFINE_integer("timeout", 900, "Seconds allowed for each bench_train run.")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(first_device, count):
    """The environment of a process that drives devices first_device .. +count-1."""
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    if FLAGS.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={count}")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(d) for d in range(first_device, first_device + count))
    return env


def run_one(devices, fsdp, launch, bench_args):
    """bench_train's JSON line for one setting (None if it printed none)."""
    mesh = [f"--config.mesh.data={1 if fsdp else devices}",
            f"--config.mesh.fsdp={devices if fsdp else 1}"]
    command = [sys.executable, "-m", "benchmarks.bench_train", f"--config={FLAGS.config}",
               f"--batch_size={FLAGS.per_device_batch * devices}", *mesh, *bench_args]
    if launch == "single" or devices == 1:
        procs = [subprocess.Popen(command, env=_env(0, devices), stdout=subprocess.PIPE,
                                  text=True)]
    else:
        address = f"localhost:{_free_port()}"
        procs = [subprocess.Popen(
            command + [f"--coordinator_address={address}", f"--num_processes={devices}",
                       f"--process_id={i}"], env=_env(i, 1), stdout=subprocess.PIPE,
            text=True) for i in range(devices)]
    outputs = [p.communicate(timeout=FLAGS.timeout)[0] for p in procs]
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        print(f"bench_train failed ({devices} devices, fsdp {fsdp}, {launch}): exit "
              f"{failed[0]}", file=sys.stderr, flush=True)
        return None
    lines = [line for line in outputs[0].splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main(argv):
    bench_args = argv[1:]
    launches = ["single", "per_device"] if FLAGS.launch == "both" else [FLAGS.launch]
    for fsdp in (f == "on" for f in FLAGS.fsdp):
        baseline = None
        for devices in (int(d) for d in FLAGS.devices):
            for launch in launches:
                if launch == "per_device" and devices == 1 and len(launches) > 1:
                    continue  # one device: both launches are the same single process
                result = run_one(devices, fsdp, launch, bench_args)
                if result is None:
                    continue
                per_device = result["images_per_s_per_chip"]
                if devices == 1:
                    baseline = per_device
                result.update(launch=launch, fsdp=fsdp,
                              scaling=per_device / baseline if baseline else None)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
