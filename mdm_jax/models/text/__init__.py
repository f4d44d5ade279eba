"""Text encoders for the denoiser's conditioning, chosen by `config.kind`:

  't5'           frozen T5 v1.1 / Flan-T5 encoder from a Hugging Face directory
                 (`t5.checkpoint_dir`), or random weights of a released size (`t5.preset`)
  'small'        a small encoder trained with the denoiser (its params join the train state)
  'precomputed'  no encoder at training time: embeddings come from files
                 (python -m mdm_jax.precompute_text; mdm_jax.conditioning reads them)
  'none'         no text

The training loop calls:

  module, params = load_text_encoder(config, shardings=...)   # T5: frozen, sharded
  params = init_text_encoder_params(config, rng, boxed=True)  # small: inside the train state
  features = encode(module, params, tokens, mask)             # [B, L, D], padded rows zero

`tokens, mask` come from a sentencepiece tokenizer, `tokenizer_path(config)` (the data
package tokenises; mdm_jax.conditioning joins the two).
Every encoder's output is zero at padded positions. docs/text.md has the details.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mdm_jax.models.text import hf_weights, small, t5

KINDS = ("none", "t5", "small", "precomputed")
DTYPES = ("float32", "bfloat16")
TRAINABLE_KINDS = ("small",)


def text_encoder_config(**overrides):
    """Defaults of the text encoder config; `overrides` replace top-level keys."""
    cfg = ml_collections.ConfigDict(dict(
        kind="none",
        max_length=128,       # tokens per caption, EOS included (the paper: 128)
        # Activations; a frozen T5 also keeps its weights in this dtype (it is never trained).
        dtype="float32",
        attention_impl=ml_collections.config_dict.placeholder(str),  # None/'xla'/'cudnn'
        tokenizer="",         # sentencepiece model; '' = <t5.checkpoint_dir>/spiece.model
        t5=ml_collections.ConfigDict(dict(
            checkpoint_dir="",  # config.json + weights + spiece.model (e.g. flan-t5-xl)
            preset="",          # or random weights of this size: one of t5.PRESETS
        )),
        small=ml_collections.ConfigDict(dict(
            vocab_size=0,       # 0 = the tokenizer's vocabulary size (filled by conditioning)
            width=512, depth=4, num_heads=8,
            position="learned",  # or 'sinusoidal'
        )),
        precomputed_dir="",   # output of `python -m mdm_jax.precompute_text`
    ))
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"Unknown text encoder config key {key!r}; valid keys: {sorted(cfg)}")
        setattr(cfg, key, value)
    return cfg


def validate(config):
    """Checks a text encoder config once, with messages that name the fix."""
    if config.kind not in KINDS:
        raise ValueError(f"text.kind={config.kind!r}; use one of {KINDS}.")
    if config.dtype not in DTYPES:
        raise ValueError(f"text.dtype={config.dtype!r}; use one of {DTYPES}.")
    if config.max_length < 1:
        raise ValueError(f"text.max_length={config.max_length} must be at least 1 (EOS).")
    if config.kind == "t5":
        if bool(config.t5.checkpoint_dir) == bool(config.t5.preset):
            raise ValueError("text.kind='t5' needs exactly one of text.t5.checkpoint_dir (a "
                             "Hugging Face T5 directory) or text.t5.preset (random weights, "
                             f"one of {sorted(t5.PRESETS)}).")
        if config.t5.preset and config.t5.preset not in t5.PRESETS:
            raise ValueError(f"text.t5.preset={config.t5.preset!r}; use one of "
                             f"{sorted(t5.PRESETS)}.")
    if config.kind == "small":
        s = config.small
        if s.width % s.num_heads:
            raise ValueError(f"text.small.width={s.width} must be divisible by "
                             f"text.small.num_heads={s.num_heads}.")
        if s.position not in small.POSITIONS:
            raise ValueError(f"text.small.position={s.position!r}; use one of {small.POSITIONS}.")
        if s.position == "sinusoidal" and s.width % 2:
            raise ValueError(f"text.small.width={s.width} must be even for sinusoidal positions.")
        if not s.vocab_size and not config.tokenizer:
            raise ValueError("text.kind='small' needs text.tokenizer (a sentencepiece model) "
                             "or text.small.vocab_size.")
    if config.kind == "precomputed" and not config.precomputed_dir:
        raise ValueError("text.kind='precomputed' needs text.precomputed_dir (made by "
                         "`python -m mdm_jax.precompute_text`).")
    return config


def is_trainable(config):
    """Whether the encoder's params belong in the train state (else frozen or absent)."""
    return config.kind in TRAINABLE_KINDS


def tokenizer_path(config):
    """The sentencepiece model that makes this encoder's tokens."""
    if config.tokenizer:
        return config.tokenizer
    if config.kind == "t5" and config.t5.checkpoint_dir:
        return os.path.join(config.t5.checkpoint_dir, "spiece.model")
    raise ValueError(f"text.kind={config.kind!r} has no tokenizer: set text.tokenizer.")


def _t5_config(config):
    if config.t5.checkpoint_dir:
        return t5.read_config(config.t5.checkpoint_dir)
    return t5.PRESETS[config.t5.preset]


def feature_dim(config):
    """Width D of the features the denoiser receives (its conditioning_feature_dim); 0 = none.

    A 'precomputed' width is stored with the embeddings (mdm_jax.conditioning reads it)."""
    validate(config)
    if config.kind == "t5":
        return _t5_config(config).d_model
    if config.kind == "small":
        return config.small.width
    if config.kind == "precomputed":
        raise ValueError("text.kind='precomputed': the width is stored with the embeddings; "
                         "read it with mdm_jax.conditioning.text.feature_dim.")
    return 0


def build_text_encoder(config):
    """The Flax module of `config`, or None for 'none' and 'precomputed'.

    `module.apply({'params': params}, tokens, mask)` maps int tokens [B, L] and mask
    [B, L] (1 = real token) to features [B, L, D] in `config.dtype`, zero where mask is 0.
    """
    validate(config)
    dtype = jnp.dtype(config.dtype)
    if config.kind == "t5":
        return t5.T5Encoder(_t5_config(config), dtype=dtype, param_dtype=dtype,
                            attention_impl=config.attention_impl)
    if config.kind == "small":
        s = config.small
        if not s.vocab_size:
            raise ValueError("text.small.vocab_size is 0: set it, or build the encoder from "
                             "mdm_jax.conditioning.text.encoder_config(config), which reads "
                             "it from the tokenizer.")
        return small.SmallTextEncoder(s.vocab_size, config.max_length, s.width, s.depth,
                                      s.num_heads, s.position, dtype)
    return None


def example_inputs(config, batch_size=1):
    """(tokens, mask) of the configured length, for `init` and shape evaluation."""
    tokens = jnp.zeros((batch_size, config.max_length), jnp.int32)
    return tokens, jnp.ones((batch_size, config.max_length), jnp.int32)


def init_text_encoder_params(config, rng, boxed=False):
    """Fresh params. With boxed=True they keep their logical-axis metadata."""
    module = build_text_encoder(config)
    if module is None:
        raise ValueError(f"text.kind={config.kind!r} has no encoder params.")
    params = module.init(rng, *example_inputs(config))["params"]
    return params if boxed else nn.unbox(params)


def abstract_params(config):
    """The params' ShapeDtypeStructs, boxed with logical axis names (for shardings)."""
    return jax.eval_shape(lambda: init_text_encoder_params(config, jax.random.key(0), True))


def load_text_encoder(config, rng=None, shardings=None):
    """(module, params) ready for `encode`; (None, None) for 'none' and 'precomputed'.

    't5' with a checkpoint loads it (every encoder tensor checked, see hf_weights.py);
    otherwise params are random (from `rng`, default key 0). `shardings`: a tree of
    NamedShardings matching the params (e.g. from `abstract_params` and the training
    rules); each process then writes only the shards its devices own, so no device holds
    the whole encoder. Without it, params land on the default device.
    """
    module = build_text_encoder(config)
    if module is None:
        return None, None
    if config.kind == "t5" and config.t5.checkpoint_dir:
        abstract = nn.unbox(abstract_params(config))
        host = hf_weights.load_params(config.t5.checkpoint_dir, abstract, jnp.dtype(config.dtype))
        if shardings is None:
            return module, jax.tree_util.tree_map(jnp.asarray, host)
        return module, jax.tree_util.tree_map(
            lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index: a[index]),
            host, shardings)
    rng = jax.random.key(0) if rng is None else rng
    make = lambda r: init_text_encoder_params(config, r)  # noqa: E731
    init = jax.jit(make) if shardings is None else jax.jit(make, out_shardings=shardings)
    return module, init(rng)


def encode(module, params, tokens, mask):
    """Features [B, L, D] of tokens [B, L] with mask [B, L]; zero where mask is 0."""
    return module.apply({"params": params}, tokens, mask)


__all__ = ["KINDS", "text_encoder_config", "validate", "is_trainable", "tokenizer_path",
           "feature_dim", "build_text_encoder", "example_inputs",
           "init_text_encoder_params", "abstract_params", "load_text_encoder", "encode"]
