"""The T5 v1.1 / Flan-T5 encoder in Flax Linen.

It computes the same function as Hugging Face's `T5EncoderModel` (checked in
tests/test_text_encoders.py): token embedding without scaling; pre-norm blocks of
self-attention and a (gated) feed-forward, each added back to the residual; RMS norm
without mean subtraction or bias; no 1/sqrt(d) scaling of the attention logits; one
relative position bias, owned by the first layer in Hugging Face's layout and shared by
all layers; a final RMS norm. Unlike Hugging Face, padded output positions are zero, so
that a consumer that forgets the mask still sees nothing there.

Parameter names mirror the checkpoint's (`block_3/layer_0/SelfAttention/q/kernel` is
`encoder.block.3.layer.0.SelfAttention.q.weight`), so loading is a rename plus a
transpose (checkpoint.py).
"""
import dataclasses
import functools
import json
import math
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.models import initializers

Dtype = Any

# Hugging Face's `dense_act_fn` names. T5 v1.1 and Flan-T5 use "gelu_new", the tanh
# approximation; "gelu" is the exact erf form.
ACTIVATIONS = {
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's architecture; field names are those of Hugging Face's config.json."""
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"
    is_gated_act: bool = True

    def __post_init__(self):
        if self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(f"T5 dense_act_fn={self.dense_act_fn!r} is not supported; "
                             f"use one of {sorted(ACTIVATIONS)}.")

    @classmethod
    def from_dict(cls, hf):
        """From the dict of a Hugging Face config.json (unknown keys are ignored)."""
        # umt5 has a position bias in every layer: a different architecture.
        if hf.get("model_type", "t5") not in ("t5", "mt5"):
            raise ValueError(f"config.json has model_type={hf['model_type']!r}; a T5 "
                             "encoder needs a T5 checkpoint (e.g. google/flan-t5-xl).")
        act, gated = _activation_from_proj(hf.get("feed_forward_proj", "relu"))
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in fields}
        # config.json files written by transformers carry dense_act_fn/is_gated_act,
        # and transformers lets them win over feed_forward_proj; older files lack them.
        kwargs.setdefault("dense_act_fn", act)
        kwargs.setdefault("is_gated_act", gated)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _activation_from_proj(feed_forward_proj):
    """'gated-gelu' -> ('gelu_new', True), 'relu' -> ('relu', False), as transformers does."""
    parts = feed_forward_proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"feed_forward_proj={feed_forward_proj!r} must be 'ACT' or "
                         "'gated-ACT', e.g. 'gated-gelu'.")
    # T5 v1.1 checkpoints say 'gated-gelu' but were trained with the tanh approximation.
    act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    return act, gated


# Encoder sizes of the released Flan-T5 checkpoints (their config.json), for random-weight
# runs (benchmarks, memory checks) without downloading a checkpoint.
PRESETS = {
    "flan-t5-small": T5Config(d_model=512, d_ff=1024, num_layers=8, num_heads=6),
    "flan-t5-base": T5Config(d_model=768, d_ff=2048, num_layers=12, num_heads=12),
    "flan-t5-large": T5Config(d_model=1024, d_ff=2816, num_layers=24, num_heads=16),
    "flan-t5-xl": T5Config(d_model=2048, d_ff=5120, num_layers=24, num_heads=32),
    "flan-t5-xxl": T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64),
}


def relative_position_buckets(length, num_buckets, max_distance):
    """Bucket of every (query, key) offset of a bidirectional encoder, [length, length].

    Half the buckets are for keys after the query. Within a half, offsets below
    num_buckets / 4 get a bucket each; larger ones share logarithmically wider
    buckets up to max_distance, beyond which all fall in the last bucket. Computed in
    numpy float32 like T5's reference (the truncation to int must round the same way),
    once per static length at trace time.
    """
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (offset > 0).astype(np.int32) * half
    distance = np.abs(offset)
    max_exact = half // 2
    # log(0) never reaches the result (it is masked by `distance < max_exact`); clamp it away.
    scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(half - max_exact))
    large = np.minimum(max_exact + scaled.astype(np.int32), half - 1)
    return buckets + np.where(distance < max_exact, distance, large).astype(np.int32)


def _dense(features, name, dtype, param_dtype):
    return nn.Dense(
        features, use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=initializers.partitioned(initializers.LECUN_NORMAL,
                                             ("embed_in", "embed_out")))


def _rms_norm(epsilon, param_dtype, name):
    # Computes in float32 whatever the activations; the caller casts back.
    return nn.RMSNorm(
        epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype, name=name,
        scale_init=initializers.partitioned(initializers.ONES, ("norm",)))


class T5SelfAttention(nn.Module):
    """Multi-head self-attention with an additive position bias and no logit scaling."""
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, position_bias, mask):
        c = self.config
        b, length, _ = x.shape
        inner = c.num_heads * c.d_kv
        q, k, v = (_dense(inner, n, self.dtype, self.param_dtype)(x)
                   .reshape(b, length, c.num_heads, c.d_kv) for n in "qkv")
        out = jax.nn.dot_product_attention(
            q, k, v, bias=position_bias, mask=mask[:, None, None, :], scale=1.0,
            implementation=self.attention_impl)
        return _dense(c.d_model, "o", self.dtype, self.param_dtype)(out.reshape(b, length, inner))


class T5FeedForward(nn.Module):
    """wo(act(wi_0 x) * wi_1 x) when gated (T5 v1.1), else wo(act(wi x))."""
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        act = ACTIVATIONS[c.dense_act_fn]
        if c.is_gated_act:
            h = (act(_dense(c.d_ff, "wi_0", self.dtype, self.param_dtype)(x))
                 * _dense(c.d_ff, "wi_1", self.dtype, self.param_dtype)(x))
        else:
            h = act(_dense(c.d_ff, "wi", self.dtype, self.param_dtype)(x))
        return _dense(c.d_model, "wo", self.dtype, self.param_dtype)(h)


class T5AttentionLayer(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, position_bias, mask):
        h = _rms_norm(self.config.layer_norm_epsilon, self.param_dtype, "layer_norm")(x)
        return T5SelfAttention(self.config, self.dtype, self.param_dtype, self.attention_impl,
                               name="SelfAttention")(h.astype(self.dtype), position_bias, mask)


class T5FeedForwardLayer(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _rms_norm(self.config.layer_norm_epsilon, self.param_dtype, "layer_norm")(x)
        return T5FeedForward(self.config, self.dtype, self.param_dtype,
                             name="DenseReluDense")(h.astype(self.dtype))


class T5Block(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, position_bias, mask):
        x = x + T5AttentionLayer(self.config, self.dtype, self.param_dtype, self.attention_impl,
                                 name="layer_0")(x, position_bias, mask)
        return x + T5FeedForwardLayer(self.config, self.dtype, self.param_dtype,
                                      name="layer_1")(x)


class T5Encoder(nn.Module):
    """tokens [B, L] int, mask [B, L] (1 = real token) -> hidden states [B, L, d_model].

    `dtype` is the activation dtype; `param_dtype` the dtype `init` makes (a frozen
    encoder keeps its weights in the activation dtype: it is never trained).
    """
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, tokens, mask):
        c = self.config
        mask = mask.astype(bool)
        x = nn.Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                     embedding_init=initializers.partitioned(
                         initializers.normal(1.0), ("vocab", "embed")),
                     name="shared")(tokens)
        # [buckets, heads] is tiny: replicated.
        bias_table = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                              dtype=jnp.float32, param_dtype=self.param_dtype,
                              embedding_init=initializers.partitioned(
                                  initializers.normal(1.0), (None, None)),
                              name="relative_attention_bias")
        buckets = relative_position_buckets(tokens.shape[1], c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance)
        position_bias = jnp.transpose(bias_table(buckets), (2, 0, 1))[None]  # [1, H, L, L]
        for i in range(c.num_layers):
            x = T5Block(c, self.dtype, self.param_dtype, self.attention_impl,
                        name=f"block_{i}")(x, position_bias, mask)
        x = _rms_norm(c.layer_norm_epsilon, self.param_dtype, "final_layer_norm")(x)
        return jnp.where(mask[..., None], x, 0).astype(self.dtype)


def read_config(checkpoint_dir):
    """The T5Config of a Hugging Face checkpoint directory."""
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config.json in {checkpoint_dir!r}: point "
                                "text.t5.checkpoint_dir at a Hugging Face T5 directory "
                                "(config.json, model.safetensors or pytorch_model.bin, "
                                "spiece.model).")
    return T5Config.from_json_file(path)
