"""Two jax.distributed processes on localhost (gloo CPU collectives, 4 devices each) read
disjoint shards of the data set whose union is all of it, and assemble global arrays."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from mdm_jax.data import config as data_config
from mdm_jax.data import pipeline, shapes

N = 48
WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import jax, numpy as np
    from absl import flags
    from jax.sharding import Mesh, PartitionSpec
    flags.FLAGS.mark_as_parsed()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, process_id, config_json, output = sys.argv[1:]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                               process_id=int(process_id))
    import ml_collections
    from mdm_jax.data import pipeline
    config = ml_collections.ConfigDict(json.loads(config_json))
    batches = list(pipeline.make_iterator(config, global_batch_size=8))  # 4 per process
    mesh = Mesh(np.array(jax.devices()), ("data",))
    first = pipeline.to_global_arrays(pipeline.model_inputs(batches[0]), mesh,
                                      PartitionSpec("data"))
    global_sum = float(jax.jit(lambda x: x.sum())(first["images"]))
    with open(output, "w") as f:
        json.dump({"process_index": jax.process_index(),
                   "devices": jax.device_count(),
                   "global_shape": list(first["images"].shape),
                   "hashes": [hashlib.sha1(i.tobytes()).hexdigest()
                              for b in batches for i in b["images"]],
                   "local_sum": float(batches[0]["images"].astype(np.float64).sum()),
                   "global_sum": global_sum}, f)
    jax.distributed.shutdown()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_covering_the_data_set(tmp_path):
    shapes.build(str(tmp_path / "tfds"), image_size=16, num_examples=N, num_processes=1)
    config = data_config.get_data_config()
    config.update(dict(data_dir=str(tmp_path / "tfds"), image_size=16, num_epochs=1))
    config.shapes.update(dict(image_size=16, num_examples=N))
    everything = list(pipeline.make_iterator(config, global_batch_size=4, process_index=0,
                                             process_count=1))
    all_hashes = {hashlib.sha1(i.tobytes()).hexdigest() for b in everything for i in b["images"]}
    assert len(all_hashes) == N

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    outputs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i),
                               config.to_json(), str(outputs[i])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = [p.communicate(timeout=240)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    results = [json.loads(o.read_text()) for o in outputs]

    assert [r["process_index"] for r in results] == [0, 1]
    assert all(r["devices"] == 8 and r["global_shape"] == [8, 16, 16, 3] for r in results)
    shards = [set(r["hashes"]) for r in results]
    assert all(len(r["hashes"]) == len(s) == N // 2 for r, s in zip(results, shards))
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == all_hashes
    # The global array holds both processes' batches: its sum is the sum of theirs.
    total = sum(r["local_sum"] for r in results)
    assert all(np.isclose(r["global_sum"], total, rtol=1e-5) for r in results)
