"""Reading the reference's files: its yaml configs and its vision-model state dicts.

State dicts come as `.pth`/`.pt` (torch.save; needs PyTorch, the `torch` extra),
`.safetensors` or `.npz` (numpy only). The reference's EMA files are
`{"state_dict": ..., other items}`, and its other items pickle objects of the
reference's own modules: those are read as inert stand-ins (nothing of them is run or
kept), so neither the reference nor arbitrary pickled code is needed to read weights.
"""
import os
import pickle
import types

import numpy as np
import yaml

STATE_DICT_SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")


def read_reference_config(path):
    """The reference yaml (e.g. configs/models/cc12m_256x256.yaml) as a dict."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--reference_config={path} does not exist; pass the yaml "
                                "the checkpoint was trained with (apple/ml-mdm "
                                "configs/models/*.yaml).")
    with open(path) as f:
        try:
            reference = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid yaml: {e}") from None
    if not isinstance(reference, dict) or "unet_config" not in reference:
        raise ValueError(f"{path} has no unet_config: it is not a reference model config "
                         "(apple/ml-mdm configs/models/*.yaml).")
    return reference


def read_state_dict(path):
    """name -> float32 numpy array, from a .pth/.pt, .safetensors or .npz file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint={path} does not exist.")
    suffix = os.path.splitext(path)[1]
    if suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(f"--checkpoint={path}: unknown format {suffix!r}; use one of "
                         f"{', '.join(STATE_DICT_SUFFIXES)}.")
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file  # noqa: PLC0415
            tensors = load_file(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                tensors = {name: npz[name] for name in npz.files}
        else:
            tensors = _read_torch(path)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"Could not read {path} as {suffix}: {e}. Is the file complete "
                         "(re-download it)?") from None
    if not tensors:
        raise ValueError(f"{path} holds no tensors.")
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}


class _Inert:
    """Stands in for any pickled object of a module we don't trust or have."""

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def __setstate__(self, state):
        del state


class _WeightsUnpickler(pickle.Unpickler):
    """Resolves what tensors are rebuilt from (torch's rebuild functions, dtypes, sizes,
    OrderedDict); every other class or function is inert, so nothing pickled runs."""

    def find_class(self, module, name):
        import torch  # noqa: PLC0415 (only reached from _read_torch)
        if (module, name) == ("collections", "OrderedDict") or (
                module == "torch._utils" and name.startswith("_rebuild_")):
            return super().find_class(module, name)
        if (module, name) in (("torch._tensor", "_rebuild_from_type_v2"),
                              ("torch.nn.parameter", "Parameter")):
            return super().find_class(module, name)
        if module == "torch" and (name == "Size"
                                  or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        return _Inert


# torch.load subclasses `pickle_module.Unpickler`; this module-like object gives it ours.
_WEIGHTS_PICKLE = types.SimpleNamespace(
    Unpickler=_WeightsUnpickler, load=pickle.load, __name__="mdm_jax_weights_pickle")


def _read_torch(path):
    try:
        import torch  # noqa: PLC0415 (an optional extra)
    except ImportError:
        raise ImportError(f"Reading {path} needs PyTorch: pip install 'mdm-jax[torch]', or "
                          "give the state dict as .safetensors or .npz.") from None
    loaded = torch.load(path, map_location="cpu", weights_only=False,
                        pickle_module=_WEIGHTS_PICKLE)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]     # the reference's EMA files
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    # numpy has no bfloat16: widen every tensor to float32 before leaving torch.
    return {k: v.detach().to(torch.float32).numpy() for k, v in tensors.items()}
