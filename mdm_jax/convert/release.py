"""A reference checkpoint and its yaml -> an mdm-jax run directory that `sample` loads.

The output looks like a training run's workdir: OUTPUT/checkpoints/res<size>/0 holds a
full train state (params and EMA both the reference's weights, a fresh optimizer) and
the config, so `python -m mdm_jax.sample --checkpoint=OUTPUT` samples it,
`python -m mdm_jax.train --config=configs/from_checkpoint.py:OUTPUT` fine-tunes it and
`python -m mdm_jax.grow --from_checkpoint=OUTPUT/checkpoints/res<size>` grows it.
"""
import dataclasses
import os

import flax.linen as nn
import jax

from mdm_jax.convert import model as model_convert
from mdm_jax.convert.reference_files import read_reference_config, read_state_dict
from mdm_jax.diffusion.config import from_reference_diffusion
from mdm_jax.models import config as model_config_lib, init_params
from mdm_jax.train import checkpoint as ckpt_lib
from mdm_jax.train import defaults, loop, sharding, state as state_lib

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


def image_size(reference):
    size = reference.get("sample_image_size") or (
        reference.get("reader_config") or {}).get("image_size")
    if not size:
        raise ValueError("The reference config sets neither sample_image_size nor "
                         "reader_config.image_size: add the model's output size to it.")
    return int(size)


def stage_name(reference):
    return f"res{image_size(reference)}"


def run_config(reference, model_config, text_encoder_dir):
    """Our config for the reference model: its architecture, diffusion and text encoder,
    one stage named res<size> with the yaml's training settings."""
    size = image_size(reference)
    diffusion = from_reference_diffusion(reference_diffusion(reference))
    text = model_config.conditioning_feature_dim > 0
    if text:
        cfg = defaults.cc12m_config(model_config, size)
        cfg.text.t5.checkpoint_dir = text_encoder_dir
        cfg.text.max_length = int((reference.get("reader_config") or {}).get(
            "max_token_length", cfg.text.max_length))
    else:
        cfg = defaults.accelerator_config(model_config, "image_text", size)
    # XLA picks the attention kernel on any backend; pass
    # --config.model.attention_impl=cudnn on GPUs for the fused one.
    cfg.model.attention_impl = None
    for field in dataclasses.fields(diffusion):
        if field.name not in ("multi_res_weights", "mixed_ratio"):
            cfg.diffusion[field.name] = getattr(diffusion, field.name)
    num_levels = len(model_config_lib.levels(model_config))
    cfg.stages[stage_name(reference)] = defaults.stage(
        num_levels=num_levels, steps=int(reference.get("num_training_steps", 1)),
        global_batch_size=int(reference.get("batch_size", 256)),
        learning_rate=float(reference.get("lr", 5e-5)),
        warmup_steps=int(reference.get("warmup_steps", 0)),
        multi_res_weights=diffusion.multi_res_weights, mixed_ratio=diffusion.mixed_ratio)
    return cfg


def convert(reference_config_path, checkpoint_path, output,
            text_encoder_dir="~/models/flan-t5-xl"):
    """Writes OUTPUT/checkpoints/res<size>/0 from the reference's files; returns the
    stage's checkpoint directory."""
    reference = read_reference_config(reference_config_path)
    # Refused before the (large) weights are read.
    directory = os.path.join(os.path.abspath(output), "checkpoints", stage_name(reference))
    if ckpt_lib.latest_step(directory) is not None:
        raise FileExistsError(f"{directory} already has checkpoints: choose another "
                              "--output, or delete it.")
    state_dict = read_state_dict(checkpoint_path)
    model_config, params = model_convert.from_reference(reference["unet_config"], state_dict)
    config = run_config(reference, model_config, text_encoder_dir)
    stage = loop.plan_stages(config)[-1]
    checkpoints = ckpt_lib.StageCheckpoints(directory, async_save=False)
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    optimizer = state_lib.make_optimizer(config.optimizer, stage.config.learning_rate,
                                         stage.config.warmup_steps)
    boxed_like = jax.eval_shape(lambda: init_params(
        stage.model_config, jax.random.key(0), stage.image_size, boxed=True))

    def make_boxed(unet):
        # The reference's weights in the boxes (logical axis names) of an init, which
        # say how each is sharded.
        boxed = jax.tree_util.tree_map(lambda box, value: box.replace_boxed(value),
                                       boxed_like, unet,
                                       is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        return state_lib.state_from_params({"unet": boxed}, optimizer)
    state, _ = state_lib.create_sharded(make_boxed, mesh, rules, params)
    checkpoints.save(0, state, loop.stage_checkpoint_config(config, stage))
    checkpoints.wait()
    checkpoints.close()
    return directory
