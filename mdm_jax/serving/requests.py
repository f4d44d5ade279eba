"""What the page sends, checked: bad input becomes a BadRequest whose message says what
to change, shown in the page; a good one becomes the sampling library's Options.

A page request draws one batch: `batch` samples of one prompt or label, i.e. the sample
command's --prompt (or --labels) with --num_samples=--batch_size=batch.
"""
import dataclasses
import math

from mdm_jax.sampling import generate

MAX_SEED = 2**32 - 1


class BadRequest(ValueError):
    """Input the page must refuse, with a message for the person who typed it."""


@dataclasses.dataclass
class Request:
    """The page's fields as Gradio hands them over (numbers may be None or floats)."""
    prompt: str = ""
    negative_prompt: str = ""
    label: float = None
    sampler: str = None
    num_steps: float = None
    guidance: float = None
    eta: float = None
    seed: float = 0
    batch: float = None
    preview_every: float = 0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the loaded run and the server allow."""
    conditioning: str         # 'text', 'class' or 'none'
    num_classes: int
    max_steps: int
    devices: int              # the batch is split over this many; it must divide the batch
    max_batch: int


def whole_number(value, name, low, high):
    """value as an int in [low, high], or a BadRequest naming the field and the range."""
    if value is None or not math.isfinite(value) or value != int(value):
        raise BadRequest(f"{name} must be a whole number from {low} to {high}.")
    if not low <= int(value) <= high:
        raise BadRequest(f"{name} must be from {low} to {high}; got {int(value)}.")
    return int(value)


def finite(value, name):
    if value is None or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number.")
    return float(value)


def conditioning(request, limits):
    """(prompts, labels) of the request for the model's kind of conditioning."""
    if limits.conditioning == "text":
        prompt = (request.prompt or "").strip()
        if not prompt:
            raise BadRequest("Enter a prompt: this model draws what a text describes.")
        return (prompt,), ()
    if limits.conditioning == "class":
        label = whole_number(request.label, "The class label", 0, limits.num_classes - 1)
        return (), (label,)
    return (), ()


def sampler_settings(request, limits):
    """(sampler, steps, guidance, eta) checked against the run; eta only for DDIM."""
    if request.sampler not in generate.SAMPLERS:
        raise BadRequest(f"Choose a sampler: {', '.join(generate.SAMPLERS)}.")
    steps = whole_number(request.num_steps, "Steps", 1, limits.max_steps)
    guidance = finite(request.guidance, "Guidance")
    if limits.conditioning == "none" and guidance != 1:
        raise BadRequest("This model is unconditional: set guidance to 1 (no guidance).")
    eta = None
    if request.sampler == "ddim":
        eta = finite(request.eta, "Eta")
        if not 0 <= eta <= 1:
            raise BadRequest(f"Eta must be from 0 to 1; got {eta}.")
    return request.sampler, steps, guidance, eta


def batch_size(request, limits):
    """The batch, a multiple of the devices it is split over, at most limits.max_batch."""
    batch = whole_number(request.batch, "Batch", limits.devices, limits.max_batch)
    if batch % limits.devices:
        raise BadRequest(f"Batch must be a multiple of {limits.devices} (the devices the "
                         f"batch is split over); got {batch}.")
    return batch


def to_options(request, limits, defaults):
    """(generate.Options, preview_every) of a request; defaults: the run's config
    sampling settings (generate.with_config_defaults), which fill eta for other samplers
    as the sample command does."""
    prompts, labels = conditioning(request, limits)
    sampler, steps, guidance, eta = sampler_settings(request, limits)
    batch = batch_size(request, limits)
    seed = whole_number(request.seed, "Seed", 0, MAX_SEED)
    every = whole_number(request.preview_every, "Preview every", 0, steps)
    options = generate.Options(
        prompts=prompts, labels=labels, num_samples=batch, num_steps=steps, sampler=sampler,
        eta=defaults.eta if eta is None else eta, guidance=guidance,
        negative_prompt=request.negative_prompt or "", seed=seed, batch_size=batch)
    return options, every
