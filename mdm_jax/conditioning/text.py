"""How a training config's text encoder meets its data, its denoiser and its sampler.

The `text` section is the one source of the text settings. This module derives what the
others need from it, without writing into them: the data pipeline's `TextInputs`
(tokenizer, caption length, precomputed embeddings), the denoiser's feature width (checked
against model.conditioning_feature_dim), and the encoder itself. `TextConditioning`
holds the encoder (frozen T5 params, or a trainable one's init) and gives the train step
its `text_fn` and the sampler its prompt encodings.
"""
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.data import sources as data_sources
from mdm_jax.data import text_embeddings
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.transforms import TextInputs
from mdm_jax.models import text as text_lib
from mdm_jax.parallel import sharding


def encoder_config(config):
    """A copy of config.text with what it leaves to the data filled in: a small
    encoder's tokenizer (default: the data set's own) and vocabulary size (default: the
    tokenizer's). The copy is what the encoder is built from; config is unchanged."""
    text = config.text.copy_and_resolve_references()
    if text.kind == "small":
        if not text.tokenizer:
            text.tokenizer = data_sources.describe(config.data).tokenizer
        if not text.tokenizer:
            raise ValueError(f"text.kind='small' on data.dataset={config.data.dataset!r}, "
                             "which ships no tokenizer: set text.tokenizer (a sentencepiece "
                             "model; python -m mdm_jax.train_tokenizer makes one).")
        if not text.small.vocab_size:
            text.small.vocab_size = tokenizer_lib.load(text.tokenizer).vocab_size
    return text


def precomputed_source_config(text):
    """For text.kind='precomputed': the config of the encoder the embeddings came from
    (stored with them), so that sampling encodes prompts, and the empty prompt, with it."""
    stored = text_embeddings.read_metadata(text.precomputed_dir)["text_config"]
    return text_lib.text_encoder_config(**stored)


def feature_dim(text):
    """Width of the features the denoiser receives; 0 = none."""
    if text.kind == "precomputed":
        text_lib.validate(text)
        return text_embeddings.read_metadata(text.precomputed_dir)["width"]
    return text_lib.feature_dim(text)


def check_text(config):
    """Validates the text section (with what encoder_config fills in) and that the model
    takes its features' width."""
    text = encoder_config(config)
    text_lib.validate(text)
    if text.kind == "none":
        return
    width = feature_dim(text)
    if config.model.conditioning_feature_dim != width:
        raise ValueError(
            f"model.conditioning_feature_dim={config.model.conditioning_feature_dim} but the "
            f"text encoder ({config.text.kind}) gives {width}-wide features: set "
            f"config.model.conditioning_feature_dim={width}.")


def data_text_inputs(config):
    """What the data pipeline reads of each caption for this config (None: no text)."""
    text = config.text
    if text.kind == "none":
        return None
    if text.kind == "precomputed":
        return TextInputs(max_length=text.max_length, embeddings_dir=text.precomputed_dir)
    return TextInputs(tokenizer=text_lib.tokenizer_path(encoder_config(config)),
                      max_length=text.max_length)


def no_text(trainable, frozen, batch):
    """Text conditioning for models without text: nothing."""
    return None, None


def precomputed_text(trainable, frozen, batch):
    """Text conditioning read from the batch (embeddings computed ahead of training)."""
    return batch["text_embeddings"], batch["token_mask"]


@dataclasses.dataclass
class TextConditioning:
    config: Any                               # encoder_config(...) of the run's config
    module: Optional[Any] = None
    frozen_params: Optional[Any] = None       # a frozen encoder's params, sharded
    # The jitted encoder of encode_prompts, made once: a new jit each call retraced it.
    _encode: Optional[Any] = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, config, mesh, rules):
        check_text(config)
        text = encoder_config(config)
        if text.kind != "t5":
            return cls(text, text_lib.build_text_encoder(text))
        abstract = text_lib.abstract_params(text)
        if not text.t5.checkpoint_dir:  # random weights (benchmarks), made leaf by leaf
            params = sharding.create_leafwise(abstract, mesh, rules, seed=0)
            return cls(text, text_lib.build_text_encoder(text), params)
        shardings = sharding.tree_shardings(abstract, mesh, rules)
        module, params = text_lib.load_text_encoder(text, shardings=shardings)
        return cls(text, module, params)

    @property
    def trainable(self):
        return text_lib.is_trainable(self.config)

    def init_boxed(self, rng):
        """A trainable encoder's fresh params (boxed), which join the train state."""
        return text_lib.init_text_encoder_params(self.config, rng, boxed=True)

    def text_fn(self):
        """The train step's text_fn(trainable_params, frozen_params, batch)."""
        kind, module = self.config.kind, self.module
        if kind == "none":
            return no_text
        if kind == "precomputed":
            return precomputed_text

        def encode(trainable, frozen, batch):
            params = trainable["text"] if self.trainable else frozen
            features = text_lib.encode(module, params, batch["tokens"], batch["token_mask"])
            return features, batch["token_mask"]
        return encode

    def encode_prompts(self, params, prompts):
        """(features, mask) of prompts for sampling; '' is the unconditional input.

        A model trained on precomputed embeddings samples with the encoder they came from
        (stored with them), loaded on first use.
        """
        encoder = self.config
        if encoder.kind == "precomputed":
            encoder = precomputed_source_config(self.config)
            if self.module is None:
                self.module, self.frozen_params = text_lib.load_text_encoder(encoder)
            params = self.frozen_params
        else:
            params = params["text"] if self.trainable else self.frozen_params
        tokens, mask = tokenizer_lib.tokenize(prompts, text_lib.tokenizer_path(encoder),
                                              encoder.max_length)
        if self._encode is None:
            module = self.module
            self._encode = jax.jit(lambda p, t, m: text_lib.encode(module, p, t, m))
        features = self._encode(params, jnp.asarray(tokens), jnp.asarray(mask))
        return features.astype(jnp.float32), jnp.asarray(np.asarray(mask))
