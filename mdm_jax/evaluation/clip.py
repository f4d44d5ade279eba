"""CLIP in Flax Linen, loaded from a Hugging Face `openai/clip-vit-*` directory: the CLIP score.

The MDM reference scores samples with torchmetrics' `CLIPScore("openai/clip-vit-base-patch16")`:
100 · cos(E_image, E_caption), clamped at 0. This module computes the same embeddings as
Hugging Face's `CLIPModel.get_image_features` / `get_text_features` (checked in
tests/test_clip.py to 1e-5 on tiny random models of both activations), so any of the
released ViT-B/32, B/16, L/14 (and L/14-336) checkpoints can be used without PyTorch.

```python
scorer = CLIPScorer.from_pretrained("/models/clip-vit-base-patch16", batch_size=64)
scores = scorer.score(samples, captions)   # [N] float32, 100 · max(cos, 0) per pair
scores.mean()                               # the reported CLIP score
```

Conventions:
- Images are NHWC: float in [-1, 1] (our samples) or uint8 in [0, 255], RGB (or one grey
  channel), any size; `preprocess_images` makes them CLIP's input (see its docstring for
  where it differs from Hugging Face's PIL/torchvision processors).
- Captions become `[B, max_length]` int32 ids and mask (`tokenize`), BOS … EOS then padding;
  a caption that is too long keeps its EOS, as CLIPTokenizer with truncation=True does.
- Parameter names mirror the checkpoint's (`text_model/encoder/layers_3/self_attn/q_proj/
  kernel` is `text_model.encoder.layers.3.self_attn.q_proj.weight`), so loading is a rename
  plus a transpose (`hf_name`). Weight files are read by mdm_jax.models.text.hf_weights.

Two differences from torchmetrics, which matter only for unusual inputs:
- torchmetrics clamps the *mean* (max(mean(100 cos), 0)); `clip_score` clamps each pair, as
  the metric's definition says. They agree whenever no pair has a negative cosine, which
  for CLIP and real captions is the rule; `mean_clip_score` gives torchmetrics' aggregate.
- torchmetrics (its current code) tokenises without truncation, then cuts ids to 77, dropping the
  EOS of a longer caption (the text tower then pools another position); `tokenize` keeps
  the EOS in the last position, as the tokenizer's own truncation does.
"""
import dataclasses
import functools
import json
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.models.text import hf_weights as hf_checkpoint

Dtype = Any

# CLIPImageProcessor's defaults (OpenAI's training statistics), used when the directory has
# no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL's code for bicubic resampling, as preprocessor_config.json writes it

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIPTokenizer's pre-tokenisation: special tokens, English contractions, runs of letters,
# single digits, runs of other non-space characters; everything else is dropped.
_PRETOKENIZE = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                r"|[^\s\p{L}\p{N}]+")


def quick_gelu(x):
    """OpenAI CLIP's GELU approximation x · sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


# Hugging Face's `hidden_act` names: the OpenAI checkpoints use quick_gelu, most others
# (e.g. LAION's) the exact erf form.
ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": functools.partial(nn.gelu, approximate=False),
}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """What both towers share. Field names and defaults are transformers' (ViT-B/32's)."""
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP hidden_act={self.hidden_act!r} is not supported; use one "
                             f"of {sorted(ACTIVATIONS)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIP hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}.")


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    # 2 in the OpenAI checkpoints' text_config (a historical mistake that transformers keeps
    # as a rule: pool at the largest id); 49407, the real EOS, in newer files.
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, hf):
        """From the dict of a Hugging Face CLIPModel config.json (unknown keys are ignored)."""
        if hf.get("model_type", "clip") != "clip":
            raise ValueError(f"config.json has model_type={hf['model_type']!r}; expected a "
                             "CLIPModel checkpoint (e.g. openai/clip-vit-base-patch16).")
        return cls(text=_tower_config(hf, "text", TextConfig),
                   vision=_tower_config(hf, "vision", VisionConfig),
                   projection_dim=hf.get("projection_dim", 512))

    @classmethod
    def from_pretrained(cls, directory):
        with open(os.path.join(directory, "config.json")) as f:
            return cls.from_dict(json.load(f))


def _tower_config(hf, tower, config_cls):
    """One tower's config as transformers reads it, legacy `<tower>_config_dict` included.

    Older files (e.g. openai/clip-vit-large-patch14) carry both a full `text_config` and a
    partial `text_config_dict`; transformers completes the latter with its defaults and lets
    the result override the former, so its missing keys fall back to the defaults, not to
    `text_config` (which changes eos_token_id from 2 to 49407, among others).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    values = dict(defaults)
    values.update(hf.get(f"{tower}_config") or {})
    legacy = hf.get(f"{tower}_config_dict")
    if legacy is not None:
        values.update(defaults)
        values.update(legacy)
    for key in ("image_size", "patch_size"):
        if key in values:
            values[key] = _square(values[key], f"{tower}_config.{key}")
    return config_cls(**{k: values[k] for k in defaults})


def _square(value, what):
    """An int, or a [n, n] list (transformers allows both) -> n."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{what}={value}: only square images and patches are supported.")
        value = value[0]
    return int(value)


# ----------------------------------------------------------------------------- model


def _dense(features, name, dtype, param_dtype, use_bias=True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


def _layer_norm(epsilon, param_dtype, name):
    # Computed in float32 whatever the activations.
    return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype, name=name)


class SelfAttention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections and 1/sqrt(head_dim) scaling."""
    config: TowerConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        b, length, width = x.shape
        head_dim = width // c.num_attention_heads
        q, k, v = (_dense(width, f"{n}_proj", self.dtype, self.param_dtype)(x)
                   .reshape(b, length, c.num_attention_heads, head_dim) for n in "qkv")
        # The softmax is computed in float32 by the XLA implementation.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim ** -0.5)
        out = out.reshape(b, length, width)
        return _dense(width, "out_proj", self.dtype, self.param_dtype)(out)


class MLP(nn.Module):
    config: TowerConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = _dense(c.intermediate_size, "fc1", self.dtype, self.param_dtype)(x)
        h = ACTIVATIONS[c.hidden_act](h)
        return _dense(c.hidden_size, "fc2", self.dtype, self.param_dtype)(h)


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attn(LN1(x)), then x + mlp(LN2(x)).

    The residual stream stays float32 (it is small next to the matmuls), which keeps a
    bfloat16 run closer to the float32 scores.
    """
    config: TowerConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        eps = self.config.layer_norm_eps
        h = _layer_norm(eps, self.param_dtype, "layer_norm1")(x).astype(self.dtype)
        x = x + SelfAttention(self.config, self.dtype, self.param_dtype, name="self_attn")(h, mask)
        h = _layer_norm(eps, self.param_dtype, "layer_norm2")(x).astype(self.dtype)
        return x + MLP(self.config, self.dtype, self.param_dtype, name="mlp")(h)


class Encoder(nn.Module):
    config: TowerConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        x = x.astype(jnp.float32)
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, self.param_dtype, name=f"layers_{i}")(x, mask)
        return x


class VisionEmbeddings(nn.Module):
    """Patches (a strided conv without bias), a learned class token first, learned positions."""
    config: VisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size,
                          padding="VALID", use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="patch_embedding")(pixel_values)
        b = patches.shape[0]
        # Row-major over the patch grid, like torch's flatten of [B, D, H, W].
        patches = patches.reshape(b, -1, c.hidden_size)
        cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,),
                         self.param_dtype)
        tokens = jnp.concatenate(
            [jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, c.hidden_size)), patches], axis=1)
        positions = nn.Embed(tokens.shape[1], c.hidden_size, param_dtype=self.param_dtype,
                             name="position_embedding")(jnp.arange(tokens.shape[1]))
        return tokens.astype(jnp.float32) + positions.astype(jnp.float32)


class VisionTransformer(nn.Module):
    """Normalised pixels [B, S, S, C] (S = image_size) -> pooled class token [B, hidden]."""
    config: VisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        if pixel_values.shape[1:3] != (c.image_size, c.image_size):
            raise ValueError(f"CLIP's vision tower takes {c.image_size}² images, got "
                             f"{pixel_values.shape[1:3]}: preprocess_images resizes them.")
        x = VisionEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(
            pixel_values.astype(self.dtype))
        # "layrnorm": transformers' spelling, kept so that names map one to one.
        x = _layer_norm(c.layer_norm_eps, self.param_dtype, "pre_layrnorm")(x)
        x = Encoder(c, self.dtype, self.param_dtype, name="encoder")(x)
        return _layer_norm(c.layer_norm_eps, self.param_dtype, "post_layernorm")(x[:, 0])


def eos_positions(input_ids, eos_token_id):
    """Where the text tower pools each caption, [B]: the first EOS, as transformers picks it.

    With the legacy eos_token_id == 2 of the OpenAI configs, transformers takes the position
    of the largest id instead (the real EOS, 49407, is the largest id of the vocabulary);
    padding with EOS is harmless either way, since the first occurrence wins.
    """
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class TextTransformer(nn.Module):
    """Token ids and mask [B, L] (L <= max_position_embeddings) -> pooled EOS state [B, hidden].

    Attention is causal and also ignores padded keys; the EOS follows every real token, so
    its state, the only one used, doesn't depend on the padding or on L.
    """
    config: TextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        c = self.config
        b, length = input_ids.shape
        if length > c.max_position_embeddings:
            raise ValueError(f"{length} tokens per caption, but CLIP's text tower has "
                             f"{c.max_position_embeddings} positions.")
        x = TextEmbeddings(c, self.param_dtype, name="embeddings")(input_ids)
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
        x = Encoder(c, self.dtype, self.param_dtype, name="encoder")(x, mask)
        x = _layer_norm(c.layer_norm_eps, self.param_dtype, "final_layer_norm")(x)
        return x[jnp.arange(b), eos_positions(input_ids, c.eos_token_id)]


class TextEmbeddings(nn.Module):
    config: TextConfig
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        c = self.config
        tokens = nn.Embed(c.vocab_size, c.hidden_size, param_dtype=self.param_dtype,
                          name="token_embedding")(input_ids)
        positions = nn.Embed(c.max_position_embeddings, c.hidden_size,
                             param_dtype=self.param_dtype,
                             name="position_embedding")(jnp.arange(input_ids.shape[1]))
        return tokens.astype(jnp.float32) + positions.astype(jnp.float32)[None]


class CLIP(nn.Module):
    """Both towers and their projections (without bias) into the shared embedding space.

    `apply(..., method="image_features")` / `"text_features"` give one tower's raw
    (unnormalised) embeddings in float32, like transformers' get_image_features /
    get_text_features; `__call__` runs both (for `init`).
    """
    config: CLIPConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.text_model = TextTransformer(c.text, self.dtype, self.param_dtype)
        self.vision_model = VisionTransformer(c.vision, self.dtype, self.param_dtype)
        self.visual_projection = _dense(c.projection_dim, None, self.dtype, self.param_dtype,
                                        use_bias=False)
        self.text_projection = _dense(c.projection_dim, None, self.dtype, self.param_dtype,
                                      use_bias=False)

    def image_features(self, pixel_values):
        pooled = self.vision_model(pixel_values).astype(self.dtype)
        return self.visual_projection(pooled).astype(jnp.float32)

    def text_features(self, input_ids, attention_mask):
        pooled = self.text_model(input_ids, attention_mask).astype(self.dtype)
        return self.text_projection(pooled).astype(jnp.float32)

    def __call__(self, pixel_values, input_ids, attention_mask):
        return self.image_features(pixel_values), self.text_features(input_ids, attention_mask)


def abstract_params(config, dtype=jnp.float32):
    """The params' ShapeDtypeStructs (nothing is computed or allocated)."""
    module = CLIP(config, dtype, dtype)
    v, t = config.vision, config.text
    pixels = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), dtype)
    ids = jnp.zeros((1, t.max_position_embeddings), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), pixels, ids, ids))["params"]


def normalize(embeddings):
    """L2-normalised along the last axis."""
    return embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)


def image_embeddings(module, params, pixel_values, normalized=True):
    """CLIP input pixels [B, S, S, C] -> image embeddings [B, projection_dim] float32."""
    out = module.apply({"params": params}, pixel_values, method="image_features")
    return normalize(out) if normalized else out


def text_embeddings(module, params, input_ids, attention_mask, normalized=True):
    """Token ids and mask [B, L] -> text embeddings [B, projection_dim] float32."""
    out = module.apply({"params": params}, input_ids, attention_mask, method="text_features")
    return normalize(out) if normalized else out


def clip_score(image_embeds, text_embeds):
    """100 · max(cos(image, text), 0) for each pair, [B]; embeddings raw or normalised."""
    cos = jnp.sum(normalize(image_embeds) * normalize(text_embeds), axis=-1)
    return 100.0 * jnp.maximum(cos, 0.0)


def mean_clip_score(image_embeds, text_embeds):
    """torchmetrics' CLIPScore aggregate: max(mean over pairs of 100 · cos, 0), a scalar."""
    cos = jnp.sum(normalize(image_embeds) * normalize(text_embeds), axis=-1)
    return jnp.maximum(100.0 * jnp.mean(cos), 0.0)


# ----------------------------------------------------------------------------- weights

# Tensors of a CLIPModel checkpoint that the score doesn't use: position-id buffers (older
# transformers saved them) and the contrastive loss's temperature.
_IGNORED = re.compile(r"(^|\.)position_ids$|^logit_scale$")


def hf_name(path):
    """Our parameter path (a tuple of names) -> (checkpoint tensor name, layout).

    layout: "dense" (Flax [in, out] is torch's [out, in] transposed), "conv" (Flax
    [kh, kw, in, out] is torch's [out, in, kh, kw]) or None (same layout).
    """
    *modules, leaf = path
    prefix = ".".join(re.sub(r"^layers_(\d+)$", r"layers.\1", m) for m in modules)
    if leaf == "class_embedding":
        return f"{prefix}.class_embedding", None
    if leaf == "bias":
        return f"{prefix}.bias", None
    if leaf == "kernel":
        return f"{prefix}.weight", "conv" if modules[-1] == "patch_embedding" else "dense"
    if leaf in ("scale", "embedding"):  # LayerNorm, Embed
        return f"{prefix}.weight", None
    raise ValueError(f"No checkpoint name for parameter {'/'.join(path)}.")


def _to_flax(value, layout):
    if layout == "dense":
        return value.T
    if layout == "conv":
        return value.transpose(2, 3, 1, 0)
    return value


def _checkpoint_shape(shape, layout):
    """The torch shape whose _to_flax is `shape`."""
    if layout == "dense":
        return tuple(shape[::-1])
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def _describe(names, limit=10):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_params(directory, config, dtype=jnp.float32):
    """The model's params from the directory's weights, a nested dict of numpy arrays in `dtype`.

    Every parameter must come from a tensor of the right shape and every tensor must be
    used (position_ids buffers and logit_scale excepted); otherwise one ValueError names
    each missing, mis-shaped and unexpected tensor.
    """
    abstract = abstract_params(config)
    with hf_checkpoint.open_weights(directory) as source:
        available = source.names()
        plan, missing, misshaped = {}, [], []
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
            keys = tuple(k.key for k in path)
            name, layout = hf_name(keys)
            if name not in available:
                missing.append(name)
                continue
            want = _checkpoint_shape(leaf.shape, layout)
            if source.shape(name) != want:
                misshaped.append((name, f"{name} has shape {source.shape(name)}, expected {want}"))
                continue
            plan[keys] = (name, layout)

        used = {name for name, _ in plan.values()} | {name for name, _ in misshaped}
        unexpected = {n for n in available - used if not _IGNORED.search(n)}
        problems = []
        if missing:
            problems.append(f"missing tensors: {_describe(missing)}")
        if misshaped:
            problems.append("mis-shaped tensors: " + "; ".join(m for _, m in misshaped))
        if unexpected:
            problems.append(f"unexpected tensors (not part of this model): "
                            f"{_describe(unexpected)}")
        if problems:
            raise ValueError(
                f"The checkpoint in {directory!r} does not match its config.json's CLIP model: "
                + "; ".join(problems) + ". Check that config.json belongs to these weights.")

        params = {}
        for keys, (name, layout) in plan.items():
            node = params
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            value = _to_flax(source.read(name), layout)
            node[keys[-1]] = np.ascontiguousarray(value.astype(dtype))
        return params


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class ImageProcessing:
    """CLIPImageProcessor's settings: resize the short side to `size`, centre-crop `crop_size`²,
    normalise with `mean` and `std` (per channel, on [0, 1] values)."""
    size: int = 224
    crop_size: int = 224
    mean: Sequence[float] = OPENAI_CLIP_MEAN
    std: Sequence[float] = OPENAI_CLIP_STD

    @classmethod
    def from_pretrained(cls, directory, image_size):
        """From preprocessor_config.json, or CLIP's defaults at `image_size` without one."""
        path = os.path.join(directory, "preprocessor_config.json")
        if not os.path.isfile(path):
            return cls(size=image_size, crop_size=image_size)
        with open(path) as f:
            hf = json.load(f)
        if hf.get("resample", BICUBIC) != BICUBIC:
            raise ValueError(f"{path} asks for resample={hf['resample']}; only bicubic "
                             f"({BICUBIC}), CLIP's, is implemented.")
        size = hf.get("size", image_size)
        size = size["shortest_edge"] if isinstance(size, dict) else size
        crop = hf.get("crop_size", image_size)
        if isinstance(crop, dict):
            crop = _square([crop["height"], crop["width"]], "crop_size")
        return cls(size=int(size), crop_size=int(crop),
                   mean=tuple(hf.get("image_mean", OPENAI_CLIP_MEAN)),
                   std=tuple(hf.get("image_std", OPENAI_CLIP_STD)))


def resized_shape(height, width, shortest_edge):
    """(height, width) after scaling the shorter side to `shortest_edge`; the longer side is
    truncated to an int, as transformers computes it."""
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


def to_unit_range(images):
    """uint8 [0, 255] or float [-1, 1] images -> float32 in [0, 1] (floats are clipped)."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"Images must be uint8 in [0, 255] or float in [-1, 1], got "
                         f"{images.dtype}.")
    return jnp.clip((images.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def preprocess_images(images, processing=ImageProcessing()):
    """NHWC images (uint8 in [0, 255] or float in [-1, 1]) -> CLIP pixel values
    [B, crop_size, crop_size, 3] float32, in JAX (jit-able; shapes are static).

    The steps of CLIPImageProcessor: grey -> RGB, resize the short side to `size` with
    bicubic interpolation, centre crop (offsets rounded down), scale to [0, 1], subtract the
    mean and divide by the std. An image that already has the right size is not resampled,
    and then the result equals Hugging Face's to float precision.

    Resizing differs slightly. Hugging Face's processors resample uint8 images and round the
    result to uint8: PIL's bicubic in CLIPImageProcessorPil (and in the transformers < 5
    processor that torchmetrics was written against), torchvision's antialiased bicubic in
    transformers 5's default CLIPImageProcessor. Both use the Keys cubic with a = -0.5 and,
    when shrinking, widen it by the scale factor (antialiasing). jax.image.resize's
    "bicubic" is the same kernel and, with antialias=True, widens it the same way, so that
    is what we use; without antialiasing a 64² -> 32² image differs from PIL's by up to
    10/255 (2/255 on average), and a 256² -> 224² one would alias where PIL doesn't. What
    remains is their uint8 rounding (PIL rounds after each of its two 1-D passes): measured
    in tests/test_clip.py on smooth images, 64², 48² and 48x64 down to 32² and 16² up to
    32² differ from both processors by at most 1/255 per pixel (0.3/255 on average), i.e.
    about 0.015 after normalisation. Our result is clipped to [0, 1] after resizing, as the
    conversion to uint8 clips; it is not rounded.
    """
    x = to_unit_range(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"Images must be [B, H, W, 3] (or one grey channel), got {x.shape}.")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    b, h, w, c = x.shape
    out_h, out_w = resized_shape(h, w, processing.size)
    if (out_h, out_w) != (h, w):
        x = jax.image.resize(x, (b, out_h, out_w, c), "bicubic", antialias=True)
        x = jnp.clip(x, 0.0, 1.0)
    crop = processing.crop_size
    if crop > min(out_h, out_w):
        raise ValueError(f"crop_size {crop} is larger than the resized image ({out_h}, {out_w}).")
    top, left = (out_h - crop) // 2, (out_w - crop) // 2
    x = x[:, top:top + crop, left:left + crop]
    mean, std = (jnp.asarray(v, jnp.float32) for v in (processing.mean, processing.std))
    return (x - mean) / std


# ----------------------------------------------------------------------------- text


def _special_token(directory, key, default):
    """A special token's text from tokenizer_config.json or special_tokens_map.json."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as f:
                token = json.load(f).get(key)
            if token is not None:
                return token["content"] if isinstance(token, dict) else token
    return default


def _bpe_tokenizer(vocab_path, merges_path):
    """CLIP's byte-level BPE tokenizer built from vocab.json and merges.txt.

    The pipeline of CLIPTokenizer: NFC, whitespace runs to one space, lower case; CLIP's
    pre-tokenisation regex, then bytes as printable characters; BPE where a word's last
    symbol carries "</w>"; "<|startoftext|> … <|endoftext|>" around every caption.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = BPE.read_file(vocab_path, merges_path)
    tok = Tokenizer(BPE(vocab, merges, unk_token=EOS_TOKEN, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # invert=True: the regex's matches are the pieces; what lies between is dropped.
        pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.add_special_tokens([AddedToken(t, special=True) for t in (BOS_TOKEN, EOS_TOKEN)])
    for token in (BOS_TOKEN, EOS_TOKEN):
        if tok.token_to_id(token) is None:
            raise ValueError(f"{vocab_path} has no {token!r}; not a CLIP vocabulary.")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(t, tok.token_to_id(t)) for t in (BOS_TOKEN, EOS_TOKEN)])
    return tok


def load_tokenizer(directory, max_length=77):
    """The directory's CLIP tokenizer (a `tokenizers.Tokenizer`), set to truncate and pad to
    `max_length` tokens, BOS and EOS included.

    Reads tokenizer.json; without one, builds the tokenizer from vocab.json and merges.txt.
    The padding token is the directory's `pad_token` (CLIP's is "<|endoftext|>").
    """
    from tokenizers import Tokenizer  # a runtime dependency; imported where used

    path = os.path.join(directory, "tokenizer.json")
    vocab, merges = (os.path.join(directory, n) for n in ("vocab.json", "merges.txt"))
    if os.path.isfile(path):
        tok = Tokenizer.from_file(path)
    elif os.path.isfile(vocab) and os.path.isfile(merges):
        tok = _bpe_tokenizer(vocab, merges)
    else:
        raise FileNotFoundError(f"No CLIP tokenizer in {directory!r}: expected tokenizer.json "
                                "(or vocab.json and merges.txt).")
    pad_token = _special_token(directory, "pad_token", EOS_TOKEN)
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"The pad token {pad_token!r} is not in the tokenizer of {directory!r}.")
    # Truncation leaves room for BOS and EOS, which the post-processor adds afterwards.
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tok


def tokenize(tokenizer, texts):
    """Captions -> (ids, mask), int32 numpy arrays [B, max_length] (load_tokenizer's length)."""
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int32)
    mask = np.array([e.attention_mask for e in encodings], np.int32)
    return ids, mask


# ----------------------------------------------------------------------------- scorer


def _in_batches(fn, arrays, batch_size):
    """fn over the leading axis in chunks of `batch_size` (the last one zero-padded, so that
    one compiled shape serves every chunk), concatenated as numpy."""
    n = len(arrays[0])
    if batch_size is None or n == 0:
        return np.asarray(fn(*arrays))
    outs = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        k = len(chunk[0])
        if k < batch_size:
            chunk = [np.concatenate([c, np.zeros((batch_size - k, *c.shape[1:]), c.dtype)])
                     for c in chunk]
        outs.append(np.asarray(fn(*chunk))[:k])
    return np.concatenate(outs)


class CLIPScorer:
    """CLIP embeddings and scores of images and captions, jitted per batch shape.

    `batch_size`: run in chunks of that many (the last one padded), so that one compiled
    program serves any number of inputs of one image size; None: one batch of everything.
    """

    def __init__(self, config, params, tokenizer, processing, dtype=jnp.float32, batch_size=None):
        self.config = config
        self.module = CLIP(config, dtype, dtype)
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.tokenizer = tokenizer
        self.processing = processing
        self.batch_size = batch_size
        module = self.module
        self._embed_images = jax.jit(lambda p, x: image_embeddings(
            module, p, preprocess_images(x, processing), normalized=False))
        self._embed_texts = jax.jit(lambda p, ids, mask: text_embeddings(
            module, p, ids, mask, normalized=False))

    @classmethod
    def from_pretrained(cls, directory, dtype=jnp.float32, batch_size=None):
        """Config, weights, tokenizer and preprocessing from a Hugging Face CLIP directory."""
        config = CLIPConfig.from_pretrained(directory)
        return cls(config, load_params(directory, config, jnp.dtype(dtype)),
                   load_tokenizer(directory, config.text.max_position_embeddings),
                   ImageProcessing.from_pretrained(directory, config.vision.image_size),
                   dtype=dtype, batch_size=batch_size)

    def image_embeddings(self, images, normalized=True):
        """NHWC images (uint8 or float in [-1, 1]) -> [N, projection_dim] float32 numpy."""
        images = np.asarray(images)
        out = _in_batches(lambda x: self._embed_images(self.params, x), [images], self.batch_size)
        return np.asarray(normalize(out)) if normalized else out

    def text_embeddings(self, texts, normalized=True):
        """Captions -> [N, projection_dim] float32 numpy."""
        ids, mask = tokenize(self.tokenizer, texts)
        out = _in_batches(lambda i, m: self._embed_texts(self.params, i, m), [ids, mask],
                          self.batch_size)
        return np.asarray(normalize(out)) if normalized else out

    def score(self, images, texts):
        """100 · max(cos, 0) of each image with its caption, [N] float32 numpy."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} captions.")
        return np.asarray(clip_score(self.image_embeddings(images, normalized=False),
                                     self.text_embeddings(texts, normalized=False)))
