"""python -m mdm_jax.serve: the request checks (fast), then the real server (slow) on the
tiny converted text model (tests/reference_model.py) and on the demo run the training
tests share, driven by headless Chromium (Debian's) through Playwright, and by Gradio's
own client for concurrent and repeated requests."""
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

from mdm_jax.sampling import generate
from mdm_jax.serving import previews, programs
from mdm_jax.serving.requests import BadRequest, Limits, Request, to_options
from reference_model import CAPTIONS
from training_runs import ROOT, env_with_devices, free_port, run_to_end

CHROMIUM = "/usr/bin/chromium"
# Headless as root, and no calls to outside hosts (this machine's network is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# The request the page and the sample command both draw.
SETTINGS = dict(prompt="a red circle", negative_prompt="blue", sampler="dpm++", steps=3,
                guidance=3, seed=7, batch=2, preview_every=1)
# The same for the class-conditional demo run (50 classes).
LABEL_SETTINGS = dict(label=3, sampler="ddim", steps=3, guidance=2, seed=5, batch=2,
                      preview_every=0)
SCREENSHOT_COPY = "/tmp/serve_screenshot.png"  # for people to look at


# The checks of a request: fast, no server.

TEXT = Limits(conditioning="text", num_classes=0, max_steps=1000, devices=2, max_batch=8)
CLASSES = Limits(conditioning="class", num_classes=50, max_steps=1000, devices=2, max_batch=8)
DEFAULTS = generate.Options(sampler="ddpm", num_steps=50, eta=0.0, guidance=2.0)


def request(**fields):
    values = dict(prompt="a cat", sampler="dpm++", num_steps=20, guidance=3.0, eta=0.0,
                  seed=1, batch=2, preview_every=5)
    return Request(**{**values, **fields})


def test_a_good_request_becomes_the_sample_commands_options():
    options, every = to_options(request(negative_prompt="blur"), TEXT, DEFAULTS)
    assert options == generate.Options(
        prompts=("a cat",), num_samples=2, num_steps=20, sampler="dpm++", eta=0.0,
        guidance=3.0, negative_prompt="blur", seed=1, batch_size=2)
    assert every == 5
    options, _ = to_options(request(prompt="", label=49.0), CLASSES, DEFAULTS)
    assert (options.prompts, options.labels) == ((), (49,))


@pytest.mark.parametrize("limits, fields, message", [
    (TEXT, dict(prompt="  "), "Enter a prompt"),
    (CLASSES, dict(label=50), "The class label must be from 0 to 49; got 50"),
    (CLASSES, dict(label=None), "The class label must be a whole number"),
    (TEXT, dict(num_steps=0), "Steps must be from 1 to 1000; got 0"),
    (TEXT, dict(num_steps=2.5), "Steps must be a whole number"),
    (TEXT, dict(batch=3), "Batch must be a multiple of 2"),
    (TEXT, dict(batch=10), "Batch must be from 2 to 8"),
    (TEXT, dict(sampler="euler"), "Choose a sampler"),
    (TEXT, dict(sampler="ddim", eta=1.5), "Eta must be from 0 to 1"),
    (TEXT, dict(guidance=float("nan")), "Guidance must be a number"),
    (TEXT, dict(preview_every=21), "Preview every must be from 0 to 20"),
])
def test_a_bad_request_is_refused_with_what_to_change(limits, fields, message):
    with pytest.raises(BadRequest, match=message):
        to_options(request(**fields), limits, DEFAULTS)


def test_previews_come_every_few_steps_and_after_the_last():
    # 10 of 1000 steps visit gamma indices 910, 819, ..., 91 and end at 0.
    assert list(previews.preview_steps(10, 1000, 4).values()) == [4, 8, 10]
    assert list(previews.preview_steps(3, 1000, 1).values()) == [1, 2, 3]


def test_the_program_cache_keeps_the_most_recently_used():
    cache = programs.ProgramCache(2)
    made = []
    get = lambda key: cache.get(key, lambda: made.append(key) or key)
    assert get("a") == ("a", True) and get("b") == ("b", True)
    assert get("a") == ("a", False)     # used again: b is now the oldest
    get("c")
    assert get("a") == ("a", False) and get("b") == ("b", True) and len(cache) == 2


# The server end to end: a real process, a real browser.

class Server:
    """python -m mdm_jax.serve on a free localhost port, its output in a log file."""

    def __init__(self, checkpoint, folder):
        port = free_port()
        self.url, self.log_path = f"http://127.0.0.1:{port}/", os.path.join(folder, "log")
        # Gradio's copies of the results go to the test's folder, not the shared /tmp/gradio.
        env = {**env_with_devices(2), "GRADIO_TEMP_DIR": os.path.join(folder, "gradio")}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mdm_jax.serve", f"--checkpoint={checkpoint}",
                 f"--port={port}"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_until_up(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, "the server exited:\n" + self.log()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the server did not answer:\n" + self.log())

    def rss_mb(self):
        """Resident memory of the server process (Linux's /proc: resident pages)."""
        with open(f"/proc/{self.process.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def sample_command(checkpoint, output, s):
    """`python -m mdm_jax.sample` for the page's settings s: one batch of s['batch']."""
    what = ([f"--prompt={s['prompt']}", f"--negative_prompt={s['negative_prompt']}"]
            if "prompt" in s else [f"--labels={s['label']}"])
    return [sys.executable, "-m", "mdm_jax.sample", f"--checkpoint={checkpoint}", *what,
            f"--sampler={s['sampler']}", f"--num_steps={s['steps']}",
            f"--guidance={s['guidance']}", f"--seed={s['seed']}",
            f"--batch_size={s['batch']}", f"--num_samples={s['batch']}", f"--output={output}"]


def serve_and_sample(checkpoint, folder, settings):
    """(server, the sample command's output for settings): both made at once, on two
    cores, since each spends its first seconds importing and loading."""
    server = Server(checkpoint, str(folder))
    try:
        run_to_end(sample_command(checkpoint, str(folder / "expected"), settings))
        server.wait_until_up()
    except BaseException:
        server.stop()
        raise
    return server, str(folder / "expected")


@pytest.fixture(scope="module")
def converted(reference_model, tmp_path_factory):
    """The tiny reference-format text model as a run directory (what convert writes)."""
    from mdm_jax.reference import run_dir  # noqa: PLC0415
    files, output = reference_model["dir"], tmp_path_factory.mktemp("serve") / "run"
    run_dir.write_run_dir(str(files / "model.yaml"), str(files / "vis_model.safetensors"),
                          str(output), str(files / "t5"))
    return str(output)


@pytest.fixture(scope="module")
def served(converted, tmp_path_factory):
    server, expected = serve_and_sample(converted, tmp_path_factory.mktemp("served"), SETTINGS)
    yield server, expected
    server.stop()


@pytest.fixture(scope="module")
def served_run(uninterrupted, tmp_path_factory):
    """The class-conditional demo run the training tests share, served."""
    server, expected = serve_and_sample(uninterrupted, tmp_path_factory.mktemp("served_run"),
                                        LABEL_SETTINGS)
    yield server, expected
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"No {CHROMIUM}: apt-get install -y chromium (launch/test.sh does).")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.url)
    page.locator("#generate").wait_for()
    return page


def fill(page, settings):
    """Types settings into the page's fields (those it names)."""
    for field in ("prompt", "negative_prompt"):
        if field in settings:
            page.locator(f"#{field} textarea").fill(settings[field])
    page.locator("#sampler input").click()
    page.get_by_role("option", name=settings["sampler"], exact=True).click()
    for field in ("label", "steps", "guidance", "seed", "batch", "preview_every"):
        if field in settings:
            page.locator(f"#{field} input").fill(str(settings[field]))


# Every text the status line shows, kept by the page itself (previews pass quickly).
RECORD_STATUS = """() => {
  window.statuses = [];
  const status = document.querySelector('#status');
  new MutationObserver(() => window.statuses.push(status.innerText)).observe(
      status, {subtree: true, childList: true, characterData: true});
}"""


def generate_and_wait(page, timeout_s=300):
    """Clicks Generate; returns every status text the page showed up to 'Done'."""
    page.evaluate(RECORD_STATUS)
    page.locator("#generate").click()
    page.wait_for_function("() => window.statuses.some(s => s.startsWith('Done'))",
                           timeout=timeout_s * 1000)
    return page.evaluate("window.statuses")


def fetched(page, url):
    response = page.request.get(url)
    assert response.ok, url
    return response.body()


def shown_files(page):
    """{name: bytes} of the page's results: each sample, the level grid and the zip."""
    files = {}
    for image in page.locator("#samples img").all():
        src = image.get_attribute("src")
        files[os.path.basename(src)] = fetched(page, src)
    files["grid.png"] = fetched(page, page.locator("#levels img").get_attribute("src"))
    files["samples.zip"] = fetched(page, page.locator("#download a").first.get_attribute("href"))
    return files


def read_folder(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


@pytest.mark.slow
def test_the_page_shows_previews_then_the_sample_commands_pngs(served, browser, tmp_path):
    server, expected_folder = served
    page = open_page(browser, server)
    fill(page, SETTINGS)
    statuses = generate_and_wait(page)

    assert any(s.startswith("Step ") and "of 3" in s for s in statuses), statuses
    files, expected = shown_files(page), read_folder(expected_folder)
    assert sorted(expected) == ["00000.png", "00001.png", "grid.png"]
    for name, data in expected.items():  # byte for byte the files `sample` wrote
        assert files[name] == data, name
    with zipfile.ZipFile(io.BytesIO(files["samples.zip"])) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == expected
    # Two rows (one per sample): the 64² level beside the 16² level scaled up.
    assert np.asarray(Image.open(io.BytesIO(files["grid.png"]))).shape == (128, 128, 3)

    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    shutil.copy(tmp_path / "page.png", SCREENSHOT_COPY)


@pytest.mark.slow
def test_a_bad_request_shows_its_message_and_the_next_one_works(served, browser):
    server, expected_folder = served
    page = open_page(browser, server)
    for fields, message in ((dict(prompt=""), "Enter a prompt"),
                            (dict(steps=0), "Steps must be from 1 to 1000; got 0")):
        fill(page, {**SETTINGS, **fields})
        page.locator("#generate").click()
        page.get_by_text(message).first.wait_for(timeout=60_000)
    assert server.process.poll() is None
    fill(page, {**SETTINGS, "seed": 8})
    generate_and_wait(page)
    other_seed = shown_files(page)["00000.png"]
    assert other_seed != read_folder(expected_folder)["00000.png"]


@pytest.mark.slow
def test_concurrent_requests_finish_and_memory_stays_flat(served, tmp_path):
    from gradio_client import Client  # noqa: PLC0415 (comes with gradio)
    server, _ = served
    client = Client(server.url, verbose=False, download_files=str(tmp_path))

    def arguments(prompt, seed):  # a setting of its own: 1 unguided DDPM step
        return prompt, "", 0, "ddpm", 1, 1.0, 0.0, seed, 2, 0

    before = server.rss_mb()
    jobs = [client.submit(*arguments(CAPTIONS[i], i), api_name="/generate") for i in (0, 1)]
    statuses = [job.result(timeout=300)[0] for job in jobs]
    assert all(s.startswith("Done") for s in statuses), statuses
    # The queue ran them one after the other: the first compiled, the second reused it.
    assert sum("compiling" in s for s in statuses) == 1, statuses
    compiled = server.rss_mb() - before

    def request(i):
        status = client.predict(*arguments(CAPTIONS[i % 3], 100 + i), api_name="/generate")[0]
        assert status.startswith("Done"), status
        return server.rss_mb()

    for i in range(3):  # the allocator's pools settle over the first few
        request(i)
    rss = [request(i) for i in range(20)]
    print(f"server RSS: {before:.1f} MB, {compiled:+.1f} MB compiling a setting, then over "
          "20 requests (MB):", " ".join(f"{r:.1f}" for r in rss))
    # Compiling one program of this model takes ~250 MB here, a request's own arrays and
    # PNGs ~0.1 MB: 32 MB catches a program compiled or kept per request, and leaves room
    # for the allocator's steps of ~6 MB (measured: +6 and +13.5 MB over 20 requests).
    assert max(rss) - rss[0] < 32, rss


@pytest.mark.slow
def test_a_training_run_is_served_by_label(served_run, browser):
    server, expected_folder = served_run
    page = open_page(browser, server)
    assert not page.locator("#prompt").is_visible()  # a class-conditional model
    fill(page, {**LABEL_SETTINGS, "label": 50})
    page.locator("#generate").click()
    page.get_by_text("The class label must be from 0 to 49; got 50").first.wait_for(
        timeout=60_000)
    fill(page, LABEL_SETTINGS)
    generate_and_wait(page)
    files, expected = shown_files(page), read_folder(expected_folder)
    for name, data in expected.items():
        assert files[name] == data, name
