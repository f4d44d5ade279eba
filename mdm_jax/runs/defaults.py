"""Shared defaults of every experiment config; a config in configs/ overrides what it needs.

Layout of a config:
  seed, model (mdm_jax.models.config), diffusion (mdm_jax.diffusion.DiffusionConfig fields),
  data, stages (name -> stage, run in order), optimizer, ema_decay, mesh, sharding_rules,
  and the logging/checkpoint/sample cadence.
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from mdm_jax.diffusion import DiffusionConfig
from mdm_jax.models.text import text_encoder_config
from mdm_jax.parallel.sharding import DEFAULT_RULES


def diffusion_defaults():
    cfg = ml_collections.ConfigDict({
        f.name: f.default for f in dataclasses.fields(DiffusionConfig)
        if f.name not in ("multi_res_weights", "mixed_ratio")})
    # Per-level lists; a stage may set its own (its number of levels differs).
    cfg.multi_res_weights = config_dict.placeholder(tuple)
    cfg.mixed_ratio = config_dict.placeholder(tuple)
    return cfg


def stage(num_levels, steps, global_batch_size, learning_rate, warmup_steps=0,
          multi_res_weights=None, mixed_ratio=None, gradient_accumulation_steps=1):
    """One resolution stage: train the innermost `num_levels` levels of the model.

    gradient_accumulation_steps: the global batch is run as that many micro-batches in
    turn, their gradients summed (the same update, a fraction of the activation memory).
    """
    cfg = ml_collections.ConfigDict(dict(
        num_levels=num_levels, steps=steps, global_batch_size=global_batch_size,
        learning_rate=learning_rate, warmup_steps=warmup_steps,
        gradient_accumulation_steps=gradient_accumulation_steps))
    cfg.multi_res_weights = config_dict.placeholder(tuple)
    cfg.mixed_ratio = config_dict.placeholder(tuple)
    cfg.multi_res_weights = multi_res_weights
    cfg.mixed_ratio = mixed_ratio
    return cfg


def base_config():
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    # Compiled programs kept across launches (a local folder or a URL; '' for none).
    cfg.compile_cache_dir = "~/.cache/mdm_jax/xla"
    cfg.model = config_dict.placeholder(ml_collections.ConfigDict)
    cfg.diffusion = diffusion_defaults()
    cfg.data = config_dict.placeholder(ml_collections.ConfigDict)
    cfg.text = text_encoder_config()
    cfg.stages = ml_collections.ConfigDict()
    cfg.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=2.0))
    cfg.ema_decay = 0.9999
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    cfg.sharding_rules = [list(r) for r in DEFAULT_RULES]
    cfg.log_every = 50
    cfg.checkpoint_every = 1000
    cfg.keep_checkpoints = 3
    cfg.sample_every = 5000          # 0: only at the end of each stage
    # Steps to trace for TensorBoard's profile plugin after each stage's first (0: none).
    cfg.profile_steps = 0
    # Sampling: the grids written during training (num_samples=0: none) and the defaults
    # of python -m mdm_jax.sample, whose flags have these names.
    cfg.sample = ml_collections.ConfigDict(dict(
        num_samples=8, sampler="ddim", num_steps=50, guidance=1.0, eta=0.0,
        prompts=("",)))
    # Evaluation during training (mdm_jax.training.evaluation), every eval_every steps and at
    # the end of each stage; 0: never. judge: auto (the shapes judge on shapes data),
    # packaged, none or a path; reference: statistics (python -m mdm_jax.evaluate
    # --write_reference), '' = made from the run's data set (num_reference images).
    cfg.eval_every = 0
    cfg.eval = ml_collections.ConfigDict(dict(
        num_samples=200, batch_size=50, sampler="dpm++", num_steps=25, seed=0,
        judge="auto", inception_weights="", inception_mode="pytorch_fid", clip_dir="",
        reference="", num_reference=1000, prompts=()))
    cfg.eval.guidance = config_dict.placeholder(float)  # None: sample.guidance
    return cfg


def accelerator_config(model, dataset, image_size):
    """A large-model run on GPUs/TPUs: bf16 activations, cuDNN attention, FSDP over every
    device, decoding in worker processes."""
    from mdm_jax.data.config import get_data_config  # noqa: PLC0415 (tfds is slow to import)
    cfg = base_config()
    cfg.model = model
    cfg.model.dtype = "bfloat16"
    cfg.model.attention_impl = "cudnn"
    cfg.data = get_data_config()
    cfg.data.dataset = dataset
    cfg.data.image_size = image_size
    cfg.data.num_workers = 8
    cfg.mesh.data, cfg.mesh.fsdp = 1, -1
    return cfg


def cc12m_config(model, image_size):
    """Text-to-image on CC12M-style shards with frozen Flan-T5-XL, the reference's settings.

    Point text.t5.checkpoint_dir at a local Flan-T5-XL directory (or text.t5.preset for
    random weights) and data.manual_dir at the shards. Stages are set by each config.
    """
    cfg = accelerator_config(model, "image_text", image_size)
    cfg.text.kind = "t5"
    cfg.text.dtype = "bfloat16"
    cfg.text.t5.checkpoint_dir = "~/models/flan-t5-xl"
    cfg.text.max_length = 128
    cfg.diffusion.schedule_type = "deepfloyd"
    cfg.diffusion.prediction_type = "v"
    cfg.diffusion.loss_target_type = "eps"
    cfg.sample.guidance = 7.0
    cfg.sample.prompts = ("a red bicycle leaning against a brick wall",
                          "an oil painting of a lighthouse at dawn")
    return cfg


def imagenet_config(model, image_size):
    """Class-conditional ImageNet-1k (built with python -m mdm_jax.build_data)."""
    cfg = accelerator_config(model, "imagenet", image_size)
    cfg.data.random_flip = True
    cfg.sample.guidance = 4.0
    return cfg
