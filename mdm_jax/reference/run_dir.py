"""A reference checkpoint and its yaml -> an mdm-jax run directory that `sample` loads.

The output looks like a training run's workdir: OUTPUT/checkpoints/res<size>/0 holds a
full train state (params and EMA both the reference's weights, a fresh optimizer) and
the config, so `python -m mdm_jax.sample --checkpoint=OUTPUT` samples it,
`python -m mdm_jax.train --config=configs/from_checkpoint.py:OUTPUT` fine-tunes it and
`python -m mdm_jax.grow --from_checkpoint=OUTPUT/checkpoints/res<size>` grows it.
"""
import dataclasses

import jax

from mdm_jax.models import config as model_config_lib
from mdm_jax.models import init_params
from mdm_jax.parallel import sharding
from mdm_jax.reference import unet as reference_unet
from mdm_jax.reference.diffusion import from_reference_diffusion, reference_diffusion
from mdm_jax.reference.files import read_reference_config, read_state_dict
from mdm_jax.runs import checkpoints as checkpoints_lib
from mdm_jax.runs import defaults
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.layout import RunDir
from mdm_jax.runs.stages import plan_stages, stage_checkpoint_config


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


def write_run_dir(reference_config_path, checkpoint_path, output,
                  text_encoder_dir="~/models/flan-t5-xl"):
    """Writes OUTPUT/checkpoints/res<size>/0 from the reference's files; returns the
    stage's checkpoint directory."""
    reference = read_reference_config(reference_config_path)
    # Refused before the (large) weights are read.
    directory = RunDir(output).stage_checkpoints(stage_name(reference))
    if checkpoints_lib.latest_step(directory) is not None:
        raise FileExistsError(f"{directory} already has checkpoints: choose another "
                              "--output, or delete it.")
    state_dict = read_state_dict(checkpoint_path)
    model_config, params = reference_unet.from_reference(reference["unet_config"], state_dict)
    config = run_config(reference, model_config, text_encoder_dir)
    stage = plan_stages(config)[-1]
    mesh, rules = sharding.mesh_and_rules(config)
    optimizer = state_lib.make_optimizer(config.optimizer, stage.config.learning_rate,
                                         stage.config.warmup_steps)
    abstract = jax.eval_shape(lambda: {"unet": init_params(
        stage.model_config, jax.random.key(0), stage.image_size, boxed=True)})
    # The reference's weights as params and EMA, laid out as the init's logical axis names say.
    state, _ = state_lib.create_state(abstract, {"unet": params}, {"unet": params}, optimizer,
                                      mesh, rules)
    checkpoints = checkpoints_lib.StageCheckpoints(directory, async_save=False)
    checkpoints.save(0, state, stage_checkpoint_config(config, stage))
    checkpoints.close()
    return directory
