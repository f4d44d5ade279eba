"""The layers a video model adds to the image UNet: attention over frames, and resampling
along time.

A video level keeps its clips as rows of frames, [clips * frames, H, W, C], so every 2D
layer of the image UNet runs on it unchanged, one frame per row. These layers are the only
ones that look across a clip's frames. Their outputs start at zero (as the reference's
TemporalAttentionBlock), so a video model whose other layers come from an image model
computes, at the start, that image model's output on each frame.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mdm_jax.models.initializers import LECUN_NORMAL, ZEROS, partitioned
from mdm_jax.models.layers import ATTENTION_HEADS, attend, dense, gelu, layer_norm

Dtype = Any
ROTARY_BASE = 10_000.0


def frames_last(x, frames):
    """[clips * frames, H, W, C] -> [clips * H * W, frames, C]: one sequence per pixel."""
    rows, h, w, c = x.shape
    clips = rows // frames
    return x.reshape(clips, frames, h * w, c).transpose(0, 2, 1, 3).reshape(-1, frames, c)


def frames_first(seq, shape):
    """The inverse of frames_last, back to `shape` [clips * frames, H, W, C]."""
    rows, h, w, c = shape
    frames = seq.shape[1]
    clips = rows // frames
    return seq.reshape(clips, h * w, frames, c).transpose(0, 2, 1, 3).reshape(shape)


def rotate(x):
    """Rotary positions over axis 1 (frames) of [N, T, heads, D]: channel pairs (d, d + D/2)
    turn by the frame index times ROTARY_BASE ** (-2d / D)."""
    t, d = x.shape[1], x.shape[-1]
    freqs = ROTARY_BASE ** (-jnp.arange(d // 2, dtype=jnp.float32) * 2 / d)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]  # [T, D/2]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class TemporalAttention(nn.Module):
    """At every pixel, pre-norm self-attention over the clip's frames, then an MLP
    (LayerNorm, Linear 4C, GELU, Linear), each added to its input; the two output layers
    start at zero, so the block starts as the identity."""
    rotary: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, frames):
        seq = frames_last(x, frames)
        n, t, c = seq.shape
        h = layer_norm("norm")(seq).astype(self.dtype)
        q, k, v = (a.reshape(n, t, ATTENTION_HEADS, c // ATTENTION_HEADS)
                   for a in jnp.split(dense(3 * c, "qkv", self.dtype)(h), 3, -1))
        if self.rotary:
            q, k = rotate(q), rotate(k)
        # The XLA path (softmax in float32): sequences of a few frames in a very large
        # batch (clips x pixels) are small matmuls, where a fused kernel gains little.
        out = attend(q, k, v).reshape(n, t, c)
        seq = seq + dense(c, "proj_out", self.dtype, zero_init=True)(out)
        h = layer_norm("mlp_norm")(seq).astype(self.dtype)
        h = gelu(dense(4 * c, "mlp_in", self.dtype)(h))
        seq = seq + dense(c, "mlp_out", self.dtype, zero_init=True)(h)
        return frames_first(seq, x.shape)


class TemporalResample(nn.Module):
    """A temporal level's resampling: 'down' is a stride-2 convolution over frames (kernel
    3, padding 1; H and W kept), 'up' repeats each frame twice, then a kernel-3 one."""
    features: int
    direction: str  # 'down' or 'up'
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, frames):
        """x [clips * frames, H, W, C] -> [clips * frames', H, W, features], and frames'."""
        seq = frames_last(x, frames)
        if self.direction == "up":
            seq = jnp.repeat(seq, 2, axis=1)
        stride = 2 if self.direction == "down" else 1
        seq = nn.Conv(self.features, (3,), strides=(stride,), padding=((1, 1),),
                      dtype=self.dtype, name="conv",
                      kernel_init=partitioned(LECUN_NORMAL, ("kt", "conv_in", "conv_out")),
                      bias_init=partitioned(ZEROS, ("conv_out",)))(seq)
        new_frames = seq.shape[1]
        rows = x.shape[0] // frames * new_frames
        return frames_first(seq, (rows, x.shape[1], x.shape[2], self.features)), new_frames
