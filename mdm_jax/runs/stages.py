"""A config's training stages: which levels each trains, at what size, from which step.

A stage trains the innermost `num_levels` levels of the configured model at its own
resolution, batch size and learning rate. Stages run from fewest levels to most; each
has a name (a key of config.stages) and a global step offset.
"""
import dataclasses

import jax
import ml_collections

from mdm_jax import diffusion
from mdm_jax.models import config as model_config_lib
from mdm_jax.models import init_params
from mdm_jax.parallel import sharding


@dataclasses.dataclass
class Stage:
    """Everything static about one stage, derived from the config."""
    name: str
    index: int
    config: ml_collections.ConfigDict       # the stage's entry in config.stages
    model_config: ml_collections.ConfigDict
    diffusion: diffusion.DiffusionConfig
    scales: tuple
    image_size: int
    step_offset: int                         # global step of this stage's step 0


def stage_model_config(model_config, num_levels):
    """The model of a stage: the innermost `num_levels` levels of the full model.

    In a video model the stage's clips have its top level's frames; a stage whose top
    level has one frame (the image UNet inside a video model) is an image model, so it
    trains on images (the first frames) and its parameters are the video model's inner
    ones.
    """
    chain = model_config_lib.levels(model_config)
    if not 1 <= num_levels <= len(chain):
        raise ValueError(f"A stage has num_levels={num_levels}; the model has {len(chain)} "
                         "levels, so use 1 to that.")
    stage = model_config.copy_and_resolve_references()
    level = stage.unet
    for _ in range(len(chain) - num_levels):
        level = level.inner
    stage.unet = level
    frames = model_config_lib.level_frames(model_config)
    if frames is not None:
        top = frames[len(chain) - num_levels]
        stage.num_frames = 0 if top == 1 else top
    return stage


def ordered_stage_configs(config):
    """(name, stage config) pairs from fewest levels to most (ConfigDict sorts by name)."""
    return sorted(config.stages.items(), key=lambda item: item[1].num_levels)


def plan_stages(config):
    """The stages of `config` in order, with their models, image sizes and step offsets."""
    full_scales = model_config_lib.nest_scales(config.model)
    out, offset = [], 0
    for index, (name, st) in enumerate(ordered_stage_configs(config)):
        model_cfg = stage_model_config(config.model, st.num_levels)
        scales = tuple(model_config_lib.nest_scales(model_cfg))
        image_size = config.data.image_size * scales[0] // full_scales[0]
        values = dict(config.diffusion)
        for key in ("multi_res_weights", "mixed_ratio"):
            if st.get(key) is not None:
                values[key] = st[key]
        diff = diffusion.DiffusionConfig.from_dict(values)
        diff.check_levels(len(scales))
        out.append(Stage(name, index, st, model_cfg, diff, scales, image_size, offset))
        offset += st.steps
    return out


def top_level_shape(stage, batch_size):
    """A batch of the stage's top level: NHWC images, or NTHWC clips for a video stage."""
    frames = stage.model_config.get("num_frames", 0)
    return (batch_size,) + ((frames,) if frames else ()) + (
        stage.image_size, stage.image_size, stage.model_config.input_channels)


def find_stage(stages, name):
    """The stage called `name`, or an error listing the config's stages."""
    by_name = {s.name: s for s in stages}
    if name not in by_name:
        raise ValueError(f"--stage={name!r} is not in config.stages ({sorted(by_name)}).")
    return by_name[name]


def stage_data_config(config, stage):
    """The data config at the stage's image size (and, for a video model, its frames: 1
    for an image stage, whose examples are then images)."""
    data = config.data.copy_and_resolve_references()
    data.image_size = stage.image_size
    if model_config_lib.is_video(config.model):
        data.num_frames = stage.model_config.num_frames or 1
    return data


def stage_checkpoint_config(config, stage):
    """The config saved with a stage's checkpoints: the whole config plus which stage."""
    saved = config.copy_and_resolve_references()
    saved.unlock()
    saved.stage = ml_collections.ConfigDict(dict(
        name=stage.name, num_levels=stage.config.num_levels, image_size=stage.image_size,
        process_count=jax.process_count()))
    return saved


def fresh_params(stage, text, seed):
    """Boxed fresh trainable params: the stage's UNet, and a trainable text encoder (for
    shapes and axis names; `sharded_fresh_params` makes the values)."""
    unet_key, text_key = jax.random.split(jax.random.key(seed))
    params = {"unet": init_params(stage.model_config, unet_key, stage.image_size, boxed=True)}
    if text.trainable:
        params["text"] = text.init_boxed(text_key)
    return params


def sharded_fresh_params(stage, text, seed, mesh, rules):
    """(abstract, params): `fresh_params`' boxed shapes, and its values made leaf by leaf
    on `mesh` (seconds to compile, where one program of every initialiser takes a minute)."""
    abstract = jax.eval_shape(lambda: fresh_params(stage, text, seed))
    return abstract, sharding.create_leafwise(abstract, mesh, rules, seed)
