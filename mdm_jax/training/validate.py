"""Checks a training config once, before anything runs, with messages that name the fix."""
import jax

from mdm_jax import diffusion
from mdm_jax.data import config as data_config_lib
from mdm_jax.models import config as model_config_lib
from mdm_jax.parallel import sharding
from mdm_jax.runs.stages import ordered_stage_configs


def validate(config, num_devices=None, num_processes=None):
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
    if config.model is None:
        raise ValueError("config.model is not set: the experiment config must define the model.")
    model_config_lib.validate(config.model)
    for section in ("model", "text"):
        if config[section].get("attention_impl") == "cudnn" and jax.default_backend() != "gpu":
            raise ValueError(
                f"config.{section}.attention_impl='cudnn' needs NVIDIA GPUs and this run is on "
                f"{jax.default_backend()}: set --config.{section}.attention_impl=xla.")
    data_config_lib.validate(config.data)
    model_config_lib.level_sizes(config.model, config.data.image_size)
    mesh = sharding.mesh_shape(config.mesh, num_devices)
    batch_shards = mesh[0] * mesh[1]
    diffusion.DiffusionConfig.from_dict(dict(config.diffusion))
    if not config.stages:
        raise ValueError("config.stages is empty: list at least one stage.")
    num_levels = len(model_config_lib.levels(config.model))
    previous = None
    for name, stage in ordered_stage_configs(config):
        where = f"config.stages.{name}"
        if not 1 <= stage.num_levels <= num_levels:
            raise ValueError(f"{where}.num_levels={stage.num_levels}; the model has "
                             f"{num_levels} level(s).")
        if previous is not None and stage.num_levels != previous + 1:
            raise ValueError(f"{where}.num_levels={stage.num_levels}: each stage grows the "
                             f"model by one level, so it must be {previous + 1}.")
        previous = stage.num_levels
        if stage.steps < 1:
            raise ValueError(f"{where}.steps must be >= 1; got {stage.steps}.")
        if stage.global_batch_size % batch_shards or stage.global_batch_size % num_processes:
            raise ValueError(
                f"{where}.global_batch_size={stage.global_batch_size} must be divisible by "
                f"the {batch_shards} batch shards (mesh data x fsdp) and {num_processes} "
                "process(es).")
        accumulate = stage.get("gradient_accumulation_steps", 1)
        if accumulate < 1 or stage.global_batch_size % (accumulate * batch_shards):
            raise ValueError(
                f"{where}.gradient_accumulation_steps={accumulate}: it must be >= 1 and "
                f"global_batch_size={stage.global_batch_size} divisible by it times the "
                f"{batch_shards} batch shards, so that every micro-batch splits evenly.")
        for key in ("multi_res_weights", "mixed_ratio"):
            value = stage.get(key) or config.diffusion.get(key)
            if value is not None and len(value) != stage.num_levels:
                raise ValueError(f"{key} {tuple(value)} for {where} needs one entry per level "
                                 f"({stage.num_levels}); set {where}.{key}.")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if config[key] < 1:
            raise ValueError(f"config.{key} must be >= 1; got {config[key]}.")
    return config
