"""The NestedUNet of Matryoshka Diffusion Models, in Flax Linen (NHWC)."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mdm_jax.models import config as model_config_lib
from mdm_jax.models.unet import UNet


def build_model(model_config):
    """The Flax module for `model_config`.

    `module.apply({'params': params}, xs, times, lm_outputs, lm_mask, micros, class_labels)`
    takes the noisy images NHWC (clips NTHWC for a video model; highest resolution first),
    the model times [B], text features [B, S, D] with mask [B, S], a dict of
    micro-conditioning values [B] and class labels [B], and returns the list of outputs,
    highest resolution first.
    """
    model_config_lib.validate(model_config)
    frozen = ml_collections.FrozenConfigDict(model_config)
    return UNet(level=frozen.unet, model=frozen)


def example_inputs(model_config, image_size, batch_size=1, text_length=8):
    """Zero inputs of the right shapes for `init` and shape evaluation (clips NTHWC for a
    video model)."""
    sizes = model_config_lib.level_sizes(model_config, image_size)
    frames = model_config_lib.level_frames(model_config) or [None] * len(sizes)
    xs = [jnp.zeros((batch_size,) + ((f,) if f else ()) + (s, s, model_config.input_channels),
                    jnp.float32) for f, s in zip(frames, sizes)]
    kwargs = dict(times=jnp.zeros((batch_size,), jnp.int32))
    if model_config.conditioning_feature_dim > 0:
        kwargs["lm_outputs"] = jnp.zeros(
            (batch_size, text_length, model_config.conditioning_feature_dim), jnp.float32)
        kwargs["lm_mask"] = jnp.ones((batch_size, text_length), jnp.int32)
    if model_config.num_classes > 0:
        kwargs["class_labels"] = jnp.zeros((batch_size,), jnp.int32)
    return xs, kwargs


def init_params(model_config, rng, image_size, boxed=False):
    """Fresh parameters. With boxed=True they keep their logical-axis metadata."""
    module = build_model(model_config)
    xs, kwargs = example_inputs(model_config, image_size)
    variables = module.init(rng, xs, **kwargs)
    return variables["params"] if boxed else nn.unbox(variables["params"])


__all__ = ["build_model", "example_inputs", "init_params", "UNet"]
