"""Hugging Face T5 checkpoints (a local directory) -> parameters of our T5Encoder.

Reads, in this order of preference, `model.safetensors.index.json` (sharded),
`model.safetensors`, `pytorch_model.bin.index.json` (sharded) or `pytorch_model.bin`.
safetensors files are read with the safetensors package's numpy API, tensor by tensor
(a full Flan-T5 checkpoint also holds the decoder, which is never read). `.bin` files need
PyTorch, imported only then.

Every parameter of the encoder must come from a tensor of the right shape, and every
encoder tensor of the checkpoint must be used; otherwise the load fails naming the
tensors. Decoder and LM-head tensors of a full T5ForConditionalGeneration checkpoint are
ignored, and `encoder.embed_tokens.weight` is the tied copy of `shared.weight`.

`open_weights` (with `weight_files`, `SafetensorsFiles`, `TorchFiles`) is the reading part,
shared with other Hugging Face checkpoints (CLIP, mdm_jax.evaluation.clip).
"""
import contextlib
import json
import os
import re
import zipfile

import jax
import numpy as np

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_BIN = "pytorch_model.bin"

# Tensors of a full seq2seq checkpoint that the encoder doesn't use.
_IGNORED = re.compile(r"^(decoder\.|lm_head\.)")
_TIED_EMBEDDING = "encoder.embed_tokens.weight"


def hf_name(path):
    """Our parameter path (a tuple of names) -> (checkpoint tensor name, transpose?)."""
    if path == ("shared", "embedding"):
        return "shared.weight", False
    if path == ("relative_attention_bias", "embedding"):
        return "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False
    *modules, leaf = path
    # block_3 -> block.3, layer_0 -> layer.0; Flax kernels are [in, out], torch's [out, in].
    name = ".".join(re.sub(r"^(block|layer)_(\d+)$", r"\1.\2", m) for m in modules)
    return f"encoder.{name}.weight", leaf == "kernel"


class SafetensorsFiles:
    """Tensor names, shapes and data of one or more safetensors files."""

    def __init__(self, files, stack):
        from safetensors import safe_open  # a runtime dependency; imported where used
        self._where = {}
        for path in files:
            handle = stack.enter_context(safe_open(path, framework="numpy"))
            for name in handle.keys():
                self._where[name] = handle

    def names(self):
        return set(self._where)

    def shape(self, name):
        return tuple(self._where[name].get_slice(name).get_shape())

    def read(self, name):
        return self._where[name].get_tensor(name)


class TorchFiles:
    """The same for pytorch_model.bin files (zip pickles), through PyTorch."""

    def __init__(self, files):
        try:
            import torch
        except ImportError:
            raise ImportError(
                "Reading pytorch_model.bin needs PyTorch: pip install 'mdm-jax[torch]', or "
                "convert the checkpoint to model.safetensors.") from None
        self._torch = torch
        self._tensors = {}
        for path in files:
            # Memory-map the zip format (torch >= 1.6); the legacy format can't be.
            self._tensors.update(torch.load(path, map_location="cpu", weights_only=True,
                                            mmap=zipfile.is_zipfile(path)))

    def names(self):
        return set(self._tensors)

    def shape(self, name):
        return tuple(self._tensors[name].shape)

    def read(self, name):
        t = self._tensors[name]
        # numpy has no bfloat16 view of a torch tensor: widen, the caller casts.
        if t.dtype == self._torch.bfloat16:
            t = t.float()
        return t.numpy()


def weight_files(checkpoint_dir):
    """(format, files) of the preferred weights in the directory."""
    for index_name, single, kind in ((SAFETENSORS_INDEX, SAFETENSORS, "safetensors"),
                                     (TORCH_INDEX, TORCH_BIN, "torch")):
        index = os.path.join(checkpoint_dir, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [p for p in files if not os.path.isfile(os.path.join(checkpoint_dir, p))]
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are not in "
                                        f"{checkpoint_dir!r}: {missing}.")
            return kind, [os.path.join(checkpoint_dir, p) for p in files]
        if os.path.isfile(os.path.join(checkpoint_dir, single)):
            return kind, [os.path.join(checkpoint_dir, single)]
    raise FileNotFoundError(
        f"No weights in {checkpoint_dir!r}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{TORCH_BIN} or {TORCH_INDEX}.")


@contextlib.contextmanager
def open_weights(checkpoint_dir):
    """The directory's preferred weights as one source of tensors, open inside the `with`.

    The source has `names()` (a set), `shape(name)` (a tuple, without reading the data)
    and `read(name)` (a numpy array; bfloat16 from .bin files comes back as float32).
    Shared by every Hugging Face checkpoint reader (T5 here, CLIP in mdm_jax.evaluation.clip).
    """
    kind, files = weight_files(checkpoint_dir)
    with contextlib.ExitStack() as stack:
        yield SafetensorsFiles(files, stack) if kind == "safetensors" else TorchFiles(files)


def _describe(names, limit=10):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_params(checkpoint_dir, abstract_params, dtype):
    """The encoder's params from the checkpoint, as a nested dict of numpy arrays in `dtype`.

    abstract_params: the (unboxed) tree of ShapeDtypeStructs the encoder's `init` makes,
    which gives every parameter's path and shape.
    """
    with open_weights(checkpoint_dir) as source:
        available = source.names()
        if "shared.weight" not in available and _TIED_EMBEDDING in available:
            embedding_name = _TIED_EMBEDDING
        else:
            embedding_name = "shared.weight"

        plan, missing, misshaped = {}, [], []
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
            keys = tuple(k.key for k in path)
            name, transpose = hf_name(keys)
            if name == "shared.weight":
                name = embedding_name
            if name not in available:
                missing.append(name)
                continue
            shape = source.shape(name)
            if (shape[::-1] if transpose else shape) != tuple(leaf.shape):
                want = tuple(leaf.shape)[::-1] if transpose else tuple(leaf.shape)
                misshaped.append(f"{name} has shape {shape}, expected {want}")
                continue
            plan[keys] = (name, transpose)

        used = {name for name, _ in plan.values()} | {_TIED_EMBEDDING, "shared.weight"}
        unexpected = {n for n in available - used if not _IGNORED.match(n)}
        problems = []
        if missing:
            problems.append(f"missing tensors: {_describe(missing)}")
        if misshaped:
            problems.append("mis-shaped tensors: " + "; ".join(misshaped))
        if unexpected:
            problems.append(f"unexpected tensors (not part of this encoder): "
                            f"{_describe(unexpected)}")
        if problems:
            raise ValueError(
                f"The checkpoint in {checkpoint_dir!r} does not match its config.json's T5 "
                f"encoder: " + "; ".join(problems) + ". Check that config.json belongs to "
                "these weights.")

        params = {}
        for keys, (name, transpose) in plan.items():
            value = source.read(name)
            value = value.T if transpose else value
            node = params
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = np.ascontiguousarray(value.astype(dtype))
        return params
