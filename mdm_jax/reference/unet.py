"""Reference (apple/ml-mdm, PyTorch) model configs and state dicts -> our config and params.

`from_reference` is the one path by which the reference's checkpoints enter: a rename
of every state-dict key to our parameter path plus a layout change (OIHW conv kernels to
HWIO, [out, in] linear weights to [in, out], 1x1 convs to dense kernels). Every key of
the state dict must land on exactly one parameter of the right shape, and every
parameter must be filled, or the conversion fails naming the key.
"""
import re

import flax
import jax
import numpy as np

from mdm_jax.models import config as config_lib
from mdm_jax.models import init_params

# Reference level options that change the architecture in ways we don't implement;
# each maps to the message shown when a config sets it.
_UNSUPPORTED = {
    "temporal_mode": "video (temporal) UNets are not supported yet",
    "interp_conditioning": "interp_conditioning creates layers the reference never uses",
}


def _reference_levels(reference_unet_config):
    chain, level = [], reference_unet_config
    while level is not None:
        chain.append(level)
        level = level.get("inner_config")
    return chain


def _level_from_reference(ref, nested):
    for key, why in _UNSUPPORTED.items():
        if ref.get(key):
            raise ValueError(f"Reference config sets {key}: {why}.")
    channels = list(ref["resolution_channels"])
    resnet = ref.get("resnet_config") or {}
    temporal = ref.get("temporal_dim") or 4 * channels[0]
    return config_lib.level_config(
        resolution_channels=channels,
        num_resnets_per_resolution=list(ref["num_resnets_per_resolution"]),
        attention_levels=list(ref.get("attention_levels") or []),
        num_attention_layers=list(ref.get("num_attention_layers") or [0] * len(channels)),
        temporal_dim=int(temporal),
        num_groups_norm=int(resnet.get("num_groups_norm", 32)),
        use_attention_ffn=bool(resnet.get("use_attention_ffn", False)),
        dropout=float(resnet.get("dropout", 0.0)),
        # A nested level has no mid blocks: its inner UNet takes their place.
        skip_mid_blocks=bool(ref.get("skip_mid_blocks", False)) or nested,
        skip_normalization=bool(ref.get("skip_normalization", True)) if nested else True,
        skip_inner_unet_input=bool(ref.get("skip_inner_unet_input", False)) if nested else False,
        micro_conditioning=ref.get("micro_conditioning") or "",
    )


def _text_width(reference_unet_config, state_dict, text_feature_dim):
    """Width of the text features the model takes (reference 4.1: constructor rules).

    Each level passes its effective width (its projection if it has one) inward. The
    released yaml files leave the outermost width at -1 for the trainer to fill in
    from the text encoder, so it may come from the state dict or the caller instead.
    """
    chain = _reference_levels(reference_unet_config)
    width = reference_unet_config.get("conditioning_feature_dim", -1)
    if width <= 0 and text_feature_dim:
        width = text_feature_dim
    if width <= 0 and state_dict is not None:
        key = "inner_unet." * (len(chain) - 1) + "lm_proj.weight"
        if key in state_dict:
            return int(np.shape(state_dict[key])[1])
    for level in chain[:-1]:
        if width > 0 and level.get("conditioning_feature_proj_dim", -1) > 0:
            width = level["conditioning_feature_proj_dim"]
    return width


def config_from_reference(reference_unet_config, state_dict=None, text_feature_dim=None):
    """Our model config for a reference `unet_config` (a yaml block or a fixture's JSON)."""
    chain = _reference_levels(reference_unet_config)
    levels = [_level_from_reference(ref, nested=i < len(chain) - 1)
              for i, ref in enumerate(chain)]
    for outer, inner in zip(levels, levels[1:]):
        outer.inner = inner
    innermost = chain[-1]
    width = _text_width(reference_unet_config, state_dict, text_feature_dim)
    uses_text = width > 0
    pooled = uses_text and not innermost.get("skip_cond_emb", False)
    proj = innermost.get("conditioning_feature_proj_dim", -1)
    return config_lib.validate(config_lib.model_config(
        levels[0],
        conditioning_feature_dim=max(width, 0),
        conditioning_feature_proj_dim=proj if pooled and proj > 0 else 0,
        num_lm_head_layers=int(innermost.get("num_lm_head_layers", 0)) if uses_text else 0,
        masked_cross_attention=bool(innermost.get("masked_cross_attention", 1)),
        pooled_text_embedding=pooled,
    ))


# Reference module names whose numeric child is a list index: `down_blocks.3` -> `down_blocks_3`.
_INDEXED = re.compile(r"(down_blocks|up_blocks|mid_blocks|resnets|attn|lm_head|ffn|main)\.(\d+)")
_MICRO = re.compile(r"cond_layers\.([^.]+)\.(\d+)")


def reference_key_to_path(key):
    """'down_blocks.0.resnets.1.conv1.weight' -> ('down_blocks_0/resnets_1/conv1', 'weight')."""
    module, _, leaf = key.rpartition(".")
    module = _MICRO.sub(r"cond_layers_\1.linear_\2", module)
    module = _INDEXED.sub(r"\1_\2", module)
    return module.replace(".", "/"), leaf


def _to_flax_layout(value, target_shape):
    if value.ndim == 4 and len(target_shape) == 2:   # 1x1 conv, run as a dense layer
        return value[:, :, 0, 0].T
    if value.ndim == 4:                              # conv OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:                              # Linear [out, in] -> [in, out]
        return value.T
    return value                                     # biases, norm scales


def params_from_state_dict(model_config, state_dict):
    """Maps a reference state dict onto the parameter tree of `model_config`."""
    smallest = config_lib.nest_scales(model_config)[0] * 2 ** (
        len(config_lib.levels(model_config)[-1].resolution_channels) - 1)
    abstract = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0), smallest))
    targets = {k: v.shape for k, v in flax.traverse_util.flatten_dict(abstract, sep="/").items()}
    params = {}
    for key, value in state_dict.items():
        module_path, leaf = reference_key_to_path(key)
        if leaf == "bias":
            path = f"{module_path}/bias"
        elif f"{module_path}/scale" in targets:    # GroupNorm / LayerNorm weight
            path = f"{module_path}/scale"
        else:
            path = f"{module_path}/kernel"
        if leaf not in ("weight", "bias") or path not in targets:
            raise ValueError(f"Reference key {key!r} matches no parameter of this model "
                             f"(looked for {path!r}); is the config the one this checkpoint "
                             "was trained with?")
        array = _to_flax_layout(np.asarray(value, dtype=np.float32), targets[path])
        if tuple(array.shape) != tuple(targets[path]):
            raise ValueError(f"Reference key {key!r} has shape {tuple(np.shape(value))}; "
                             f"this model expects {tuple(targets[path])} at {path!r} "
                             "(after layout conversion).")
        params[path] = array
    missing = sorted(set(targets) - set(params))
    if missing:
        raise ValueError(f"The state dict lacks {len(missing)} parameter(s), e.g. "
                         f"{_reference_name(missing[0])!r} (our {missing[0]!r}).")
    return flax.traverse_util.unflatten_dict(params, sep="/")


def _reference_name(path):
    """Our parameter path -> the reference key it comes from (for error messages)."""
    module, leaf = path.rsplit("/", 1)
    module = re.sub(r"cond_layers_([^/]+)/linear_(\d+)", r"cond_layers.\1.\2", module)
    module = re.sub(r"_(\d+)(?=/|$)", r".\1", module).replace("/", ".")
    return f"{module}.{'bias' if leaf == 'bias' else 'weight'}"


def from_reference(reference_unet_config, state_dict=None, text_feature_dim=None):
    """(model_config, params) from a reference `unet_config` and PyTorch-layout state dict.

    state_dict: name -> array (numpy or anything np.asarray takes). With None, only the
    config is converted and params is None. text_feature_dim: the text encoder's width,
    needed only when the config leaves it at -1 and no state dict tells it.
    """
    model_config = config_from_reference(reference_unet_config, state_dict, text_feature_dim)
    if state_dict is None:
        return model_config, None
    return model_config, params_from_state_dict(model_config, state_dict)
