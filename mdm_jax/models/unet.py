"""The UNet of one resolution level, and the NestedUNet as a UNet that holds an inner one.

A level with `inner` set is a NestedUNet level: its down path brings the image to the
inner size, a zero-initialised adapter adds the features to the inner model's conv_in
output, the inner model's last features come back through another zero-initialised
adapter, and its up path produces the high-resolution output (fixtures README 4.5).
Text conditioning is processed only by the innermost UNet; its tokens, mask and
pooled embedding reach every level.

Video: a level's input is a batch of clips [B, T, H, W, C]. Inside, its frames are rows
([B * T, H, W, C]) for every 2D layer, with the clip's time embedding and text repeated
per frame; temporal attention (mdm_jax/models/temporal.py) looks across them. A spatial
level halves H and W on its way down, as an image level; a temporal level (`kind:
temporal`) halves T instead, so its inner level sees fewer frames of the same size.
"""
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mdm_jax.models import group_norm as fused_group_norm
from mdm_jax.models import initializers, layers, temporal, upsample
from mdm_jax.models.config import parse_micro_conditioning
from mdm_jax.models.rows import first_rows, pad_rows

Dtype = Any


class Conditioning(NamedTuple):
    """What the innermost UNet makes of the text and labels, shared by all levels."""
    tokens: Optional[jnp.ndarray]   # [B, S, D] processed text tokens, or None
    mask: Optional[jnp.ndarray]     # [B, S] or None (no masking)
    embedding: Optional[jnp.ndarray]  # [B, temporal_dim] added to every level's temb


def _per_frame(x, frames):
    """Each clip's row repeated for its frames (rows stay as they are for images)."""
    return x if x is None or frames is None else jnp.repeat(x, frames, axis=0)


_JIT_RESNET = nn.jit(layers.ResNet, static_argnums=(3,))
_JIT_ATTENTION = nn.jit(layers.Attention)


class Stage(nn.Module):
    """ResNets, each followed by attention layers (and, in video, temporal attention
    layers), then an optional resample conv.

    Used for down blocks (resample = stride-2 conv), up blocks (each ResNet first takes
    the next skip; resample = nearest x2 then conv) and mid blocks (no resample). In a
    temporal level (`temporal`) the resampling is along time (temporal.TemporalResample).
    """
    out_channels: int
    num_resnets: int
    num_attention_layers: int
    num_groups: int
    use_attention_ffn: bool
    resample: Optional[str] = None  # None, 'down' or 'up'
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None
    remat: bool = False  # recompute each ResNet's and attention layer's activations
    num_temporal_attention_layers: int = 0  # after each ResNet's attention (video)
    temporal_rotary: bool = False  # rotary frame positions in temporal attention
    temporal: bool = False  # resample along time instead of H and W (video)
    fused_norms: bool = False  # GroupNorm with its lighter backward (group_norm.py)
    subpixel_upsample: bool = False  # the up conv at the input's size (upsample.py)

    @nn.compact
    def __call__(self, x, temb, cond, skips=None, deterministic=True, frames=None):
        """Returns the output, the activations a down block records as skips, and the
        output's frames per clip (None for images). For video, x is [clips * frames, H,
        W, C] and temb and cond are per clip."""
        # Jitted per layer: identical layers (25 attention layers at 16² in the 64² UNet)
        # are traced once and their gradients derived once, instead of once each.
        resnet, attention = _JIT_RESNET, _JIT_ATTENTION
        temporal_attention = temporal.TemporalAttention
        if self.remat:
            # Same parameters and names; the backward pass recomputes what it needs.
            resnet = nn.remat(_JIT_RESNET, static_argnums=(3,))
            attention = nn.remat(_JIT_ATTENTION)
            temporal_attention = nn.remat(temporal.TemporalAttention, static_argnums=(2,))
        temb = _per_frame(temb, frames)
        tokens, mask = _per_frame(cond.tokens, frames), _per_frame(cond.mask, frames)
        recorded = []
        for j in range(self.num_resnets):
            if skips is not None:
                x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = resnet(self.out_channels, self.num_groups, self.dropout, self.dtype,
                       self.fused_norms, name=f"resnets_{j}")(x, temb, deterministic)
            for a in range(self.num_attention_layers):
                x = attention(self.use_attention_ffn, self.dtype, self.attention_impl,
                              self.fused_norms, name=f"attn_{j * self.num_attention_layers + a}")(
                                  x, tokens, mask)
            for a in range(self.num_temporal_attention_layers):
                x = temporal_attention(
                    self.temporal_rotary, self.dtype,
                    name=f"temporal_attn_{j * self.num_temporal_attention_layers + a}")(
                        x, frames)
            recorded.append(x)
        if self.resample is not None and self.temporal:
            x, frames = temporal.TemporalResample(
                self.out_channels, self.resample, self.dtype, name="temporal_resample")(
                    x, frames)
            if self.resample == "down":
                recorded.append(x)
        elif self.resample == "down":
            x = layers.conv3x3(self.out_channels, "resample", self.dtype, stride=2)(x)
            recorded.append(x)
        elif self.resample == "up" and self.subpixel_upsample:
            x = upsample.UpsampleConv(self.out_channels, self.dtype, name="resample")(x)
        elif self.resample == "up":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = layers.conv3x3(self.out_channels, "resample", self.dtype)(x)
        return x, recorded, frames


class UNet(nn.Module):
    """One resolution level; `level.inner` makes it a NestedUNet level.

    level: the ConfigDict of this level (see mdm_jax/models/config.py).
    model: the model-wide settings (text, classes, channels, dtype).
    """
    level: Any
    model: Any

    def setup(self):
        lv, dtype = self.level, self.dtype
        self.temb_layer1 = layers.dense(lv.temporal_dim, None, dtype)
        self.temb_layer2 = layers.dense(lv.temporal_dim, None, dtype)
        self.cond_layers = {
            key: layers.MicroConditioning(lv.temporal_dim, dtype)
            for key, _ in parse_micro_conditioning(lv.micro_conditioning)}
        self.conv_in = layers.conv3x3(lv.resolution_channels[0], None, dtype)
        num_levels = len(lv.resolution_channels)
        self.down_blocks = [
            self._stage(i, lv.num_resnets_per_resolution[i],
                        "down" if i < num_levels - 1 else None)
            for i in range(num_levels)]
        self.up_blocks = [
            self._stage(i, lv.num_resnets_per_resolution[i] + 1, "up" if i > 0 else None)
            for i in reversed(range(num_levels))]
        if self.fused_norms:
            self.norm_out = fused_group_norm.GroupNorm(lv.num_groups_norm, layers.NORM_EPS,
                                                       activate=True, out_dtype=dtype)
        else:
            self.norm_out = layers.group_norm(lv.num_groups_norm, None)
        self.conv_out = layers.conv3x3(self.model.output_channels, None, dtype,
                                       zero_init=True)
        if lv.inner is not None:
            self.inner_unet = UNet(lv.inner, self.model)
            if not lv.skip_inner_unet_input:
                self.in_adapter = layers.conv3x3(lv.inner.resolution_channels[0],
                                                 None, dtype, zero_init=True)
            self.out_adapter = layers.conv3x3(lv.resolution_channels[-1], None,
                                              dtype, zero_init=True)
        else:
            if not lv.skip_mid_blocks:
                self.mid_blocks = [
                    self._stage(num_levels - 1, 1, None, num_attention_layers=1),
                    self._stage(num_levels - 1, 1, None, num_attention_layers=0)]
            self._setup_conditioning()

    def _setup_conditioning(self):
        """Text and class layers, which exist only in the innermost UNet."""
        m, dtype = self.model, self.dtype
        if m.conditioning_feature_dim > 0:
            if m.conditioning_feature_proj_dim > 0:
                self.lm_proj = layers.dense(m.conditioning_feature_proj_dim, None, dtype)
            self.lm_head = [layers.LMHeadLayer(dtype) for _ in range(m.num_lm_head_layers)]
            if m.pooled_text_embedding:
                self.cond_emb = layers.dense(self.level.temporal_dim, None, dtype,
                                             use_bias=False)
        if m.num_classes > 0:
            # One extra row, index num_classes, is the "no label" input of classifier-free
            # guidance (labels dropped in training, the unconditional half when sampling).
            # Unit-variance rows (as ADM's label embedding, PyTorch's default): each class
            # is a distinct code about as large as the time embedding from the first step;
            # std 0.02 made it some 50 times smaller, and short runs ignored the label.
            def table(rows):
                return nn.Embed(rows, self.level.temporal_dim, dtype=dtype,
                                embedding_init=initializers.partitioned(
                                    initializers.normal(1.0), ("classes", "embed_out")))
            # With class_factors, one such table per attribute (its extra row: dropped).
            if self.class_factors:
                self.class_factor_embs = [table(f + 1) for f in self.class_factors]
            else:
                self.class_emb = table(m.num_classes + 1)

    @property
    def dtype(self):
        return jnp.dtype(self.model.dtype)

    @property
    def fused_norms(self):
        # Configs saved before this setting existed get it: the parameters are the same.
        return self.model.get("fused_norms", True)

    @property
    def subpixel_upsample(self):
        return self.model.get("subpixel_upsample", True)

    def _stage(self, i, num_resnets, resample, num_attention_layers=None):
        lv = self.level
        if num_attention_layers is None:
            num_attention_layers = lv.num_attention_layers[i] if i in lv.attention_levels else 0
        temporal_layers = tuple(lv.get("num_temporal_attention_layers") or ())
        return Stage(lv.resolution_channels[i], num_resnets, num_attention_layers,
                     lv.num_groups_norm, lv.use_attention_ffn, resample, lv.dropout,
                     self.dtype, self.model.attention_impl, lv.get("remat", False),
                     temporal_layers[i] if temporal_layers else 0,
                     lv.get("temporal_positional_encoding", False),
                     lv.get("kind", "spatial") == "temporal", self.fused_norms,
                     self.subpixel_upsample)

    def condition(self, lm_outputs, lm_mask, class_labels):
        """Processes text and labels in the innermost UNet (fixtures README 4.4)."""
        if self.level.inner is not None:
            return self.inner_unet.condition(lm_outputs, lm_mask, class_labels)
        m = self.model
        tokens, mask, embedding = None, None, None
        if m.conditioning_feature_dim > 0:
            if lm_outputs is None:
                raise ValueError("This model is text-conditioned: pass lm_outputs (and lm_mask).")
            tokens = lm_outputs.astype(self.dtype)
            mask = lm_mask
            if m.conditioning_feature_proj_dim > 0:
                tokens = self.lm_proj(tokens)
            attn_mask = mask if m.masked_cross_attention else None
            for layer in self.lm_head:
                tokens = layer(tokens, attn_mask)
            if m.pooled_text_embedding:
                t32 = tokens.astype(jnp.float32)
                if mask is None or (not m.masked_cross_attention and m.num_lm_head_layers > 0):
                    pooled = t32.mean(axis=1)
                else:
                    w = mask.astype(jnp.float32)[..., None]
                    pooled = (t32 * w).sum(axis=1) / w.sum(axis=1)
                embedding = self.cond_emb(pooled.astype(self.dtype))
            if not m.masked_cross_attention:
                mask = None
        if m.num_classes > 0:
            if class_labels is None:
                raise ValueError("This model is class-conditional: pass class_labels "
                                 f"(-1 or {m.num_classes} for no label).")
            label_emb = self._label_embedding(class_labels)
            embedding = label_emb if embedding is None else embedding + label_emb
        return Conditioning(tokens, mask, embedding)

    @property
    def class_factors(self):
        return tuple(self.model.get("class_factors") or ())

    def _label_embedding(self, class_labels):
        """Embedding of labels (-1 or num_classes: no label) [B, temporal_dim]."""
        dropped = (class_labels < 0) | (class_labels >= self.model.num_classes)
        if not self.class_factors:
            return self.class_emb(jnp.where(dropped, self.model.num_classes, class_labels))
        total, rest = 0.0, class_labels
        for factor, table in zip(reversed(self.class_factors),
                                 reversed(self.class_factor_embs)):
            total = total + table(jnp.where(dropped, factor, rest % factor))
            rest = rest // factor
        # Divided so that the sum has the unit variance of a single table's rows.
        return total / np.sqrt(len(self.class_factors))

    def _time_embedding(self, times, cond, micros):
        lv = self.level
        feats = layers.sinusoidal_features(times, lv.temporal_dim).astype(self.dtype)
        temb = self.temb_layer2(nn.silu(self.temb_layer1(feats)))
        if cond.embedding is not None:
            temb = temb + cond.embedding
        batch = times.shape[0]
        for key, default in parse_micro_conditioning(lv.micro_conditioning):
            value = micros.get(key) if micros else None
            value = (jnp.full((batch,), default, jnp.float32) if value is None
                     else jnp.asarray(value, jnp.float32))
            if key == "scale":
                # Scales above this level's default are clamped to it.
                value = jnp.minimum(value / default, 1.0) * default
            else:
                value = value * 1000.0
            temb = temb + self.cond_layers[key](value)
        return temb

    def run_level(self, xs, times, cond, micros, injected=None, deterministic=True,
                  row_groups=1):
        """Runs this level and its inner levels. Returns (outputs, features).

        xs[0] may have fewer rows than the lower levels (mixed-ratio batches): this level
        then uses the first rows of the time embedding and conditioning, of each of
        `row_groups` equal blocks of the batch (models/rows.py).
        """
        lv = self.level
        x_high = xs[0]
        rows = x_high.shape[0]  # examples (clips, for video) this level runs on
        frames = x_high.shape[1] if x_high.ndim == 5 else None
        temb = self._time_embedding(times, cond, micros)
        take = lambda x: None if x is None else first_rows(x, rows, row_groups)
        level_cond = Conditioning(take(cond.tokens), take(cond.mask), None)
        temb_rows = take(temb)
        if lv.inner is not None and not lv.skip_normalization:
            # Per-example (clip) std over the rest, with Bessel's correction, no mean removal.
            std = jnp.std(x_high.astype(jnp.float32), axis=tuple(range(1, x_high.ndim)),
                          ddof=1, keepdims=True)
            x_high = x_high / std
        if frames is not None:
            x_high = x_high.reshape((rows * frames,) + x_high.shape[2:])
        x = self.conv_in(x_high.astype(self.dtype))
        if injected is not None:
            x = x + injected
        skips = [x]
        level_frames = frames
        for block in self.down_blocks:
            x, recorded, frames = block(x, temb_rows, level_cond, deterministic=deterministic,
                                        frames=frames)
            skips.extend(recorded)
        inner_outputs = []
        if lv.inner is not None:
            to_inner = None
            if not lv.skip_inner_unet_input:
                # In the inner level's batch, this level's rows are each group's first.
                to_inner = pad_rows(self.in_adapter(x), xs[1].shape[0], row_groups,
                                    frames or 1)
            inner_outputs, inner_features = self.inner_unet.run_level(
                xs[1:], times, cond, micros, to_inner, deterministic, row_groups)
            x = x + self.out_adapter(first_rows(inner_features, rows, row_groups, frames or 1))
        elif not lv.skip_mid_blocks:
            for block in self.mid_blocks:
                x, _, _ = block(x, temb_rows, level_cond, deterministic=deterministic,
                                frames=frames)
        for block in self.up_blocks:
            x, _, frames = block(x, temb_rows, level_cond, skips=skips,
                                 deterministic=deterministic, frames=frames)
        features = x
        h = self.norm_out(x)
        if not self.fused_norms:
            h = nn.silu(h).astype(self.dtype)
        out = self.conv_out(h).astype(jnp.float32)
        if level_frames is not None:
            out = out.reshape((rows, level_frames) + out.shape[1:])
        return [out] + inner_outputs, features

    def __call__(self, xs, times, lm_outputs=None, lm_mask=None, micros=None,
                 class_labels=None, deterministic=True, row_groups=1, conditioning=None):
        """xs: noisy images NHWC (or clips NTHWC), highest resolution first. Returns the
        list of outputs. row_groups: see run_level. conditioning: what `condition` made
        of the text and labels, computed once outside (a sampling loop); it replaces
        lm_outputs, lm_mask and class_labels."""
        if not isinstance(xs, (list, tuple)):
            xs = [xs]
        cond = (self.condition(lm_outputs, lm_mask, class_labels) if conditioning is None
                else conditioning)
        outputs, _ = self.run_level(list(xs), times, cond, micros or {}, None, deterministic,
                                    row_groups)
        return outputs
