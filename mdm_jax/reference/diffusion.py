"""The reference's (apple/ml-mdm) diffusion settings -> our DiffusionConfig.

`reference_diffusion` gathers a model yaml's settings into one NestedDiffusionConfig-shaped
dict; `from_reference_diffusion` maps that, refusing what either side cannot run.
"""
from mdm_jax.diffusion import DiffusionConfig

# The reference reads these sampler and diffusion settings from the yaml's top level when
# its diffusion_config block leaves them out (its "shared arguments").
_SAMPLER_KEYS = ("num_diffusion_steps", "schedule_type", "prediction_type",
                 "loss_target_type", "beta_start", "beta_end", "threshold_function",
                 "rescale_schedule", "schedule_shifted", "schedule_shifted_power")
_DIFFUSION_KEYS = ("use_vdm_loss_weights", "use_double_loss", "no_use_residual",
                   "model_output_scale", "multi_res_weights", "mixed_ratio")
# The reference's SamplerConfig defaults, for keys neither place sets.
_SAMPLER_DEFAULTS = dict(num_diffusion_steps=32, schedule_type="DDPM",
                         prediction_type="DDPM", beta_start=0.0001, beta_end=0.02,
                         threshold_function="CLIP", rescale_schedule=1.0,
                         schedule_shifted=False, schedule_shifted_power=1.0)


def reference_diffusion(reference):
    """The yaml's diffusion settings as one `NestedDiffusionConfig`-shaped dict."""
    block = dict(reference.get("diffusion_config") or {})
    sampler = dict(block.get("sampler_config") or {})
    for key in _SAMPLER_KEYS:
        if key not in sampler and key in reference:
            sampler[key] = reference[key]
    for key, value in _SAMPLER_DEFAULTS.items():
        sampler.setdefault(key, value)
    for key in _DIFFUSION_KEYS:
        if key not in block and key in reference:
            block[key] = reference[key]
    block["sampler_config"] = sampler
    return block


# The reference's enums by name. DDIM as a prediction type means eps, as DDPM does.
_REFERENCE_PREDICTION = {"DDPM": "eps", "DDIM": "eps", "V_PREDICTION": "v"}
_REFERENCE_SCHEDULE = {"COSINE": "cosine", "DDPM": "ddpm", "DEEPFLOYD": "deepfloyd"}
_REFERENCE_THRESHOLD = {"CLIP": "clip", "DYNAMIC": "dynamic", "NONE": "none"}


def _parse_ratio(text):
    return None if text is None else tuple(float(x) for x in str(text).split(":"))


def _reference_choice(field, value, mapping, why_not=None):
    if value in mapping:
        return mapping[value]
    reason = (why_not or {}).get(value, "")
    raise ValueError(
        f"Reference {field} {value!r} is not supported{reason}; "
        f"use one of {', '.join(mapping)}.")


def from_reference_diffusion(reference):
    """Maps a reference `NestedDiffusionConfig` (as JSON: a dict with `sampler_config`).

    Rejects what the reference itself cannot run (its README section 6) and what we do not
    implement, with the fix in the message, rather than computing something else silently.
    """
    sampler = reference["sampler_config"]
    problems = []
    if not reference.get("no_use_residual", False):
        problems.append("no_use_residual: false (the reference's residual path is broken: "
                        "NameError/shape error); set no_use_residual: true")
    if sampler.get("rescale_schedule", 1.0) > 1:
        problems.append("rescale_schedule > 1 (crashes the reference sampler); use 1 and "
                        "schedule_shifted_power instead")
    if not sampler.get("schedule_shifted", False):
        problems.append("schedule_shifted: false (per-level image rescaling is not "
                        "implemented); use schedule_shifted: true")
    if reference.get("model_output_scale", 0):
        problems.append("model_output_scale != 0 (tanh output squashing is not implemented); "
                        "use 0")
    if reference.get("multi_res_weights") is not None and not reference.get("use_double_loss"):
        problems.append("multi_res_weights without use_double_loss (the reference asserts); "
                        "set use_double_loss: true")
    if problems:
        raise ValueError("Unsupported reference diffusion config: " + "; ".join(problems) + ".")

    prediction = _reference_choice(
        "prediction_type", sampler["prediction_type"], _REFERENCE_PREDICTION)
    loss_target = sampler.get("loss_target_type")
    loss_target = prediction if loss_target is None else _reference_choice(
        "loss_target_type", loss_target, _REFERENCE_PREDICTION)
    threshold = _reference_choice(
        "threshold_function", sampler.get("threshold_function", "CLIP"), _REFERENCE_THRESHOLD,
        {"DYNAMIC_IF": " (its cap of 1.5 on the threshold is not implemented)"})
    schedule = _reference_choice(
        "schedule_type", sampler["schedule_type"], _REFERENCE_SCHEDULE,
        {"SIGMOID": " (the reference raises 'Unknown' for it and its helper is broken)"})
    # use_random_interp, random_downsample, average_downsample, mid_downsample and
    # reproject_signal do not enter the reference's image loss or sampler: nothing to map.
    return DiffusionConfig(
        schedule_type=schedule,
        num_diffusion_steps=int(sampler["num_diffusion_steps"]),
        beta_start=float(sampler["beta_start"]),
        beta_end=float(sampler["beta_end"]),
        schedule_shifted_power=float(sampler["schedule_shifted_power"]),
        prediction_type=prediction,
        loss_target_type=loss_target,
        use_vdm_loss_weights=bool(reference.get("use_vdm_loss_weights", False)),
        use_double_loss=bool(reference.get("use_double_loss", False)),
        multi_res_weights=_parse_ratio(reference.get("multi_res_weights")),
        mixed_ratio=_parse_ratio(reference.get("mixed_ratio")),
        threshold=threshold,
    )
