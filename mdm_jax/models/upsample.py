"""Nearest-neighbour x2 upsampling followed by a 3x3 conv, computed at the input's size.

The reference upsamples (each pixel becomes a 2x2 block) and then runs a 3x3 conv with
padding 1 on the four-times larger image. Each output pixel of phase (a, b) (its row
and column parity) sees only 2x2 distinct input pixels, the 3x3 taps that land on the
same input pixel summing their weights:

    rows of phase a = 0: input rows i-1, i     with weights W[0], W[1] + W[2]
    rows of phase a = 1: input rows i,   i+1   with weights W[0] + W[1], W[2]

(columns alike). So one 2x2 conv over the input padded by 1, with the four phases'
combined kernels side by side as 4 x C_out output channels, computes every phase on an
(H+1) x (W+1) grid; phase (a, b) is its window [a:a+H, b:b+W], interleaved into the
2H x 2W output. 16 (H+1)(W+1) multiply-adds per channel pair instead of 36 HW (0.45-0.5
of the FLOPs), and no four-times larger input is written. The parameters are the
reference layout's 3x3 kernel and bias, so checkpoints are unchanged; the outputs equal
the plain path's up to the rounding of the summed weights (tests/test_fast_paths.py).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.models.initializers import LECUN_NORMAL, ZEROS, partitioned

# PHASE_TAPS[a][t, k]: whether 3x3 tap k (offset k - 1) of phase a falls on 2x2 tap t.
PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],
                       [[1, 1, 0], [0, 0, 1]]], np.float32)


def phase_kernels(kernel):
    """[3, 3, I, O] -> [2, 2, I, 4 * O]: the 2x2 kernel of each phase (a, b), output
    channels ordered (2a + b, O)."""
    combined = jnp.einsum("atk,bsl,klio->tsiabo", PHASE_TAPS, PHASE_TAPS, kernel)
    i, o = kernel.shape[2:]
    return combined.reshape(2, 2, i, 4 * o)


def upsample_conv(x, kernel, bias):
    """Equals conv3x3(repeat(repeat(x, 2, H), 2, W), kernel, padding 1) + bias, x NHWC."""
    b, h, w, _ = x.shape
    o = kernel.shape[-1]
    y = jax.lax.conv_general_dilated(
        x, phase_kernels(kernel.astype(jnp.float32)).astype(x.dtype), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, h + 1, w + 1, 2, 2, o)
    phases = [[y[:, a:a + h, c:c + w, a, c] for c in (0, 1)] for a in (0, 1)]
    out = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [b, h, 2, w, 2, o]
    return out.reshape(b, 2 * h, 2 * w, o) + bias.astype(x.dtype)


class UpsampleConv(nn.Module):
    """The up blocks' resample layer: its params are nn.Conv's (kernel [3, 3, I, O], bias)
    under this module's name, as `layers.conv3x3` makes them."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel_axes = ("kh", "kw", "conv_in", "conv_out")
        kernel = self.param("kernel", partitioned(LECUN_NORMAL, kernel_axes),
                            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", partitioned(ZEROS, ("conv_out",)), (self.features,),
                          jnp.float32)
        return upsample_conv(x.astype(self.dtype), kernel, bias)
