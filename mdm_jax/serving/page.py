"""The Gradio page: the request's fields, previews while it denoises, then every level side
by side, each sample's PNG and a zip of them, and the sample command that draws the same.

Requests wait in Gradio's queue and run one at a time (concurrency 1), so two people
never compile the same program twice or hold two batches in device memory at once.
Bad input is answered with gr.Error (a message in the page); the server carries on.
"""
import dataclasses
import os
import shlex
import signal
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a server
try:
    import gradio as gr
except ImportError as error:
    raise ImportError("The sampling page needs Gradio: bash launch/setup_env.sh serve "
                      "(docs/serving.md, Installing).") from error

from mdm_jax.models import config as model_config_lib
from mdm_jax.sampling import generate, images
from mdm_jax.serving.requests import BadRequest, Request, to_options
from mdm_jax.serving.results import ResultFolders
from mdm_jax.serving.session import Preview, SamplerSession

# Samples are small: scaled up to fill their boxes, their pixels stay sharp squares.
CSS = ("#levels img, #samples img { image-rendering: pixelated; }\n"
       "#levels img { width: 100%; height: 100%; object-fit: contain; }")
# The handler's arguments: Request's fields, in its order.
FIELDS = tuple(field.name for field in dataclasses.fields(Request))


def sample_command(session, options):
    """The `python -m mdm_jax.sample` line that writes this request's PNGs."""
    o = options
    what = ([f"--prompt={o.prompts[0]}", f"--negative_prompt={o.negative_prompt}"]
            if o.prompts else [f"--labels={o.labels[0]}"] if o.labels else [])
    eta = [f"--eta={o.eta}"] if o.sampler == "ddim" else []
    words = ["python", "-m", "mdm_jax.sample", f"--checkpoint={session.run_dir}",
             f"--stage={session.stage.name}", *what, f"--sampler={o.sampler}",
             f"--num_steps={o.num_steps}", f"--guidance={o.guidance}", *eta,
             f"--seed={o.seed}", f"--batch_size={o.batch_size}",
             f"--num_samples={o.num_samples}", "--output=OUTPUT"]
    return shlex.join(words)


def describe(session):
    """The page's heading: which model, its levels and what it is conditioned on."""
    stage, limits = session.stage, session.limits
    sizes = " inside ".join(f"{size}²" for size in reversed(
        model_config_lib.level_sizes(stage.model_config, stage.image_size)))
    takes = {"text": "a text prompt", "none": "nothing (unconditional)",
             "class": f"a class label from 0 to {limits.num_classes - 1}"}[limits.conditioning]
    return (f"## Matryoshka diffusion: `{session.checkpoint}`\n"
            f"Stage **{stage.name}**: levels {sizes}, conditioned on {takes}. "
            "The first request of a setting compiles its program; later ones reuse it.")


def make_handler(session, results):
    """The click handler: a generator of (status, levels image, samples, download)."""
    def on_generate(*values):
        request = Request(**dict(zip(FIELDS, values)))
        try:
            options, every = to_options(request, session.limits, session.defaults)
        except BadRequest as bad:
            raise gr.Error(str(bad), title="Check the request") from bad
        yield (f"Sampling {options.batch_size} samples, {options.num_steps} {options.sampler} "
               "steps…", None, [], None)
        try:
            for event in session.run(options, every):  # previews, then the Finished one
                if isinstance(event, Preview):
                    yield (f"Step {event.steps_done} of {event.num_steps}: the x̂₀ estimate "
                           "of every level (preview)", images.level_grid(event.levels),
                           gr.skip(), gr.skip())
        except ValueError as refused:  # the sampling library's checks, naming the fix
            raise gr.Error(str(refused), title="The model refused the request") from refused
        except Exception as failed:  # noqa: BLE001 (e.g. out of memory: tell, keep serving)
            raise gr.Error(f"Sampling failed: {failed}", title="Sampling failed") from failed
        result = results.write(event.levels)
        compiled = ", compiling its program first" if event.compiled else ""
        status = (f"Done: {options.batch_size} samples in {event.seconds:.1f} s{compiled}. "
                  f"The same PNGs: `{sample_command(session, options)}`")
        yield status, result.grid, result.samples, result.archive
    return on_generate


def inputs(session):
    """{Request field: its component}, made (so shown) in this order; the fields the
    model does not take are hidden."""
    limits, d = session.limits, session.defaults
    text, labelled = limits.conditioning == "text", limits.conditioning == "class"
    return dict(
        prompt=gr.Textbox(label="Prompt", visible=text, elem_id="prompt"),
        negative_prompt=gr.Textbox(label="Negative prompt (the unconditional text of "
                                   "guidance)", visible=text, elem_id="negative_prompt"),
        label=gr.Number(label=f"Class label (0 to {limits.num_classes - 1})", value=0,
                        precision=0, visible=labelled, elem_id="label"),
        sampler=gr.Dropdown(list(generate.SAMPLERS), value=d.sampler, label="Sampler",
                            elem_id="sampler"),
        num_steps=gr.Number(label=f"Steps (1 to {limits.max_steps})", value=d.num_steps,
                            precision=0, elem_id="steps"),
        guidance=gr.Number(label="Guidance (1: none)", value=d.guidance, elem_id="guidance"),
        eta=gr.Number(label="Eta (DDIM only; 0: deterministic)", value=d.eta, elem_id="eta"),
        seed=gr.Number(label="Seed", value=0, precision=0, elem_id="seed"),
        batch=gr.Number(label=f"Batch (a multiple of {limits.devices}, at most "
                        f"{limits.max_batch})", value=limits.devices, precision=0,
                        elem_id="batch"),
        preview_every=gr.Number(label="Preview every N steps (0: off; previews run the "
                                "steps twice)", value=max(1, d.num_steps // 5), precision=0,
                                elem_id="preview_every"),
    )


def build_page(session, results, queue_size=16):
    """The Blocks of the page, its queue set up."""
    # Gradio's own copies of results older than an hour are removed every ten minutes.
    with gr.Blocks(title="mdm-jax sampling", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown(describe(session))
        with gr.Row():
            with gr.Column(scale=1):
                components = inputs(session)
                fields = [components[name] for name in FIELDS]  # the handler's order
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                levels = gr.Image(label="Every level side by side (highest first), a row "
                                  "per sample", type="filepath", format="png",
                                  interactive=False, height=480, elem_id="levels")
                samples = gr.Gallery(label="Samples (highest level)", columns=4, height="auto",
                                     elem_id="samples")
                download = gr.File(label="The PNGs (zip)", interactive=False,
                                   elem_id="download")
        button.click(make_handler(session, results), fields,
                     [status, levels, samples, download], api_name="generate")
    page.queue(max_size=queue_size, default_concurrency_limit=1)
    return page


def stop_on_sigterm():
    """SIGTERM (a scheduler, `kill`) ends the server as Ctrl-C does: Gradio closes and
    the results folder is removed."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def serve(config, run_dir, *, stage=None, host="127.0.0.1", port=7860, max_batch=8,
          max_steps=None, queue_size=16, cache_size=8):
    """Loads the run once and serves the page until interrupted."""
    session = SamplerSession(config, run_dir, stage, max_batch=max_batch,
                             max_steps=max_steps, cache_size=cache_size)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="mdm_serve_") as folder:
        page = build_page(session, ResultFolders(folder), queue_size)
        # No run history: it offers to upload runs elsewhere, and a server keeps none.
        page.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True,
                    css=CSS, run_history=False)
