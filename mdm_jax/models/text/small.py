"""A small text encoder trained with the denoiser, for offline runs without a T5 checkpoint.

Token embedding plus positions (learned or sinusoidal), `depth` pre-norm transformer
layers (self-attention over the caption's real tokens, then the GELU MLP of the UNet's
LM-head layers), a final LayerNorm; padded output positions are zero. Built from the
layers in mdm_jax/models/layers.py so that its params shard under the same rules.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mdm_jax.models import initializers, layers

Dtype = Any
POSITIONS = ("learned", "sinusoidal")


def sinusoidal_positions(length, width):
    """[length, width]: sin of position * 10000^(-2k/width) in the first half, cos in the second."""
    half = width // 2
    freqs = jnp.exp(-jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / half))
    args = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over tokens, padded keys masked."""
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        b, length, width = x.shape
        h = layers.layer_norm("norm")(x).astype(self.dtype)
        qkv = layers.dense(3 * width, "qkv", self.dtype)(h)
        q, k, v = (a.reshape(b, length, self.num_heads, width // self.num_heads)
                   for a in jnp.split(qkv, 3, axis=-1))
        out = layers.attend(q, k, v, mask).reshape(b, length, width)
        return layers.dense(width, "proj_out", self.dtype)(out)


class SmallTextEncoder(nn.Module):
    """tokens [B, L] int, mask [B, L] (1 = real token) -> [B, L, width], padded rows zero."""
    vocab_size: int
    max_length: int
    width: int = 512
    depth: int = 4
    num_heads: int = 8
    position: str = "learned"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask):
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens per caption, but the small text encoder was "
                             f"built for max_length={self.max_length}; tokenize to that length.")
        x = nn.Embed(self.vocab_size, self.width, dtype=jnp.float32,
                     embedding_init=initializers.partitioned(
                         initializers.normal(0.02), ("vocab", "embed")),
                     name="token_embedding")(tokens)
        if self.position == "learned":
            table = self.param("position_embedding", initializers.partitioned(
                initializers.normal(0.02), (None, "embed")), (self.max_length, self.width))
        else:
            table = sinusoidal_positions(self.max_length, self.width)
        x = (x + table[:length]).astype(self.dtype)
        for i in range(self.depth):
            x = x + SelfAttention(self.num_heads, self.dtype, name=f"layers_{i}_attn")(x, mask)
            x = x + layers.TokenMLP(self.dtype, name=f"layers_{i}_mlp")(x)
        x = layers.layer_norm("norm_out")(x)
        return jnp.where(mask.astype(bool)[..., None], x, 0).astype(self.dtype)
