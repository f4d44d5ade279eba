"""Building blocks of the UNet: embeddings, ResNet block, attention, text head.

Every layer is named after its counterpart in the reference (apple/ml-mdm), so that
checkpoint conversion is a rename plus a transpose. Layout is NHWC. Parameters are
float32; activations run in `dtype`; norms and softmax always compute in float32.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import group_norm as fused_group_norm
from mdm_jax.models.initializers import LECUN_NORMAL, ONES, ZEROS, partitioned

# The reference (PyTorch) uses eps 1e-5 for GroupNorm and LayerNorm; Flax defaults to 1e-6.
NORM_EPS = 1e-5
# Attention layers always use 8 heads and GroupNorm(32, C), whatever the ResNets use.
ATTENTION_HEADS = 8
ATTENTION_GROUPS = 32

Dtype = Any


def conv3x3(features, name, dtype, stride=1, zero_init=False):
    """3x3 conv with explicit padding 1 on every side (also for stride 2, unlike 'SAME').

    `name` is None inside `setup`, where Flax names submodules after their attribute.
    """
    init = ZEROS if zero_init else LECUN_NORMAL
    return nn.Conv(
        features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
        dtype=dtype, name=name,
        kernel_init=partitioned(init, ("kh", "kw", "conv_in", "conv_out")),
        bias_init=partitioned(ZEROS, ("conv_out",)))


def dense(features, name, dtype, use_bias=True, zero_init=False):
    """A linear layer; also used for the reference's 1x1 convs (same math on NHWC)."""
    init = ZEROS if zero_init else LECUN_NORMAL
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, name=name,
        kernel_init=partitioned(init, ("embed_in", "embed_out")),
        bias_init=partitioned(ZEROS, ("embed_out",)))


def group_norm(num_groups, name):
    return nn.GroupNorm(
        num_groups=num_groups, epsilon=NORM_EPS, dtype=jnp.float32, name=name,
        scale_init=partitioned(ONES, ("norm",)),
        bias_init=partitioned(ZEROS, ("norm",)))


def norm_act(x, num_groups, name, fused, out_dtype, activate=False, scale=None, shift=None):
    """GroupNorm(x), times (1 + scale) plus shift ([B, C] each) if given, then SiLU if
    `activate`, in out_dtype. `fused`: one function with a lighter backward pass
    (group_norm.py); otherwise flax's GroupNorm and autodiff. Same parameters and values.
    """
    if fused:
        return fused_group_norm.GroupNorm(num_groups, NORM_EPS, activate, out_dtype,
                                          name=name)(x, scale, shift)
    h = group_norm(num_groups, name)(x)
    if scale is not None:
        per_example = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        h = h * (1 + scale.reshape(per_example)) + shift.reshape(per_example)
    return (nn.silu(h) if activate else h).astype(out_dtype)


def layer_norm(name):
    return nn.LayerNorm(
        epsilon=NORM_EPS, dtype=jnp.float32, name=name,
        scale_init=partitioned(ONES, ("norm",)),
        bias_init=partitioned(ZEROS, ("norm",)))


def gelu(x):
    # The reference uses the exact erf form; Flax defaults to the tanh approximation.
    return nn.gelu(x, approximate=False)


def sinusoidal_features(values, temporal_dim):
    """[sin(v f_k)..., cos(v f_k)...] with f_k = exp(-k ln(1e4) / half), half = temporal_dim // 8.

    The divisor is `half`, not `half - 1`, as in the reference. Returns temporal_dim // 4 values.
    """
    half = temporal_dim // 8
    freqs = jnp.exp(-jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / half))
    args = values.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def attend(q, k, v, mask=None, implementation=None):
    """Multi-head attention. q [B,T,N,D], k/v [B,S,N,D], mask [B,S] (True = attend).

    Softmax runs in float32 (XLA path) for bf16 activations too.
    """
    if mask is not None:
        mask = mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def split_heads(x):
    """[B, T, C] -> [B, T, heads, C / heads]: head h owns channels [h C/8, (h+1) C/8)."""
    b, t, c = x.shape
    return x.reshape(b, t, ATTENTION_HEADS, c // ATTENTION_HEADS)


class ResNet(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding as scale and shift in between."""
    out_channels: int
    num_groups: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    fused_norms: bool = False

    @nn.compact
    def __call__(self, x, temb, deterministic=True):
        h = norm_act(x, self.num_groups, "norm1", self.fused_norms, self.dtype, activate=True)
        h = conv3x3(self.out_channels, "conv1", self.dtype)(h)
        ss = dense(2 * self.out_channels, "time_layer", self.dtype)(nn.silu(temb))
        scale, shift = jnp.split(ss, 2, axis=-1)
        h = norm_act(h, self.num_groups, "norm2", self.fused_norms, self.dtype,
                     activate=True, scale=scale, shift=shift)
        if self.dropout > 0:
            h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = conv3x3(self.out_channels, "conv2", self.dtype, zero_init=True)(h)
        if x.shape[-1] != self.out_channels:
            x = dense(self.out_channels, "conv3", self.dtype)(x)
        return x.astype(self.dtype) + h


# The variable collection that carries every attention layer's text keys and values
# into a sampling loop (models/text_cache.py), where the text does not change.
TEXT_KEYS_VALUES = "text_keys_values"


def text_keys_values(tokens, channels, dtype):
    """The cross-attention's keys and values of the text tokens, [B, S, 2 * channels]
    (norm_cond, then kv_cond). Called inside Attention, and by models/text_cache.py with
    one attention layer's parameters."""
    t = layer_norm("norm_cond")(tokens).astype(dtype)
    return dense(2 * channels, "kv_cond", dtype)(t)


class Attention(nn.Module):
    """Self-attention over pixels plus, if text is given, a separate cross-attention.

    The two attentions have separate softmaxes and are summed, as in the reference. The
    text's keys and values come from the TEXT_KEYS_VALUES collection where it is given.
    """
    use_ffn: bool
    dtype: Dtype = jnp.float32
    implementation: Optional[str] = None
    fused_norms: bool = False

    @nn.compact
    def __call__(self, x, tokens=None, mask=None):
        b, hgt, wid, c = x.shape
        h = norm_act(x, ATTENTION_GROUPS, "norm", self.fused_norms, self.dtype)
        q, k, v = jnp.split(dense(3 * c, "qkv", self.dtype)(h).reshape(b, hgt * wid, 3 * c), 3, -1)
        q = split_heads(q)
        out = attend(q, split_heads(k), split_heads(v), implementation=self.implementation)
        if tokens is not None:
            if self.has_variable(TEXT_KEYS_VALUES, "kv"):  # computed before a sampling loop
                kv = self.get_variable(TEXT_KEYS_VALUES, "kv")
                # It has a row per clip; a video level's frames are rows of their own,
                # each clip's consecutive (as Stage repeats the text per frame).
                kv = jnp.repeat(kv, b // kv.shape[0], axis=0)
            else:
                kv = text_keys_values(tokens, c, self.dtype)
            kc, vc = jnp.split(kv, 2, -1)
            out = out + attend(q, split_heads(kc), split_heads(vc), mask, self.implementation)
        out = out.reshape(b, hgt, wid, c)
        x = x + dense(c, "proj_out", self.dtype, zero_init=True)(out)
        if self.use_ffn:
            h = norm_act(x, ATTENTION_GROUPS, "ffn_0", self.fused_norms, self.dtype)
            h = gelu(dense(4 * c, "ffn_1", self.dtype)(h))
            x = x + dense(c, "ffn_3", self.dtype, zero_init=True)(h)
        return x


class TokenSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over text tokens (the reference's lm_head attn)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        d = x.shape[-1]
        h = layer_norm("norm")(x).astype(self.dtype)
        q, k, v = (split_heads(a) for a in jnp.split(dense(3 * d, "qkv", self.dtype)(h), 3, -1))
        out = attend(q, k, v, mask).reshape(x.shape)
        return dense(d, "proj_out", self.dtype)(out)


class TokenMLP(nn.Module):
    """LayerNorm, Linear(D, 4D), GELU, Linear(4D, D); named main_0/1/3 as in the reference."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = layer_norm("main_0")(x).astype(self.dtype)
        return dense(d, "main_3", self.dtype)(gelu(dense(4 * d, "main_1", self.dtype)(h)))


class LMHeadLayer(nn.Module):
    """One transformer layer over the text tokens before they condition the UNet."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        x = x + TokenSelfAttention(self.dtype, name="attn")(x, mask)
        return x + TokenMLP(self.dtype, name="mlp")(x)


class MicroConditioning(nn.Module):
    """Sinusoidal features of one scalar (e.g. the original image scale) -> time embedding."""
    temporal_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, values):
        h = sinusoidal_features(values, self.temporal_dim)
        h = nn.silu(dense(self.temporal_dim, "linear_0", self.dtype)(h))
        return dense(self.temporal_dim, "linear_1", self.dtype, zero_init=True)(h)
