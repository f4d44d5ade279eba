"""How a training config's text encoder meets its data and its denoiser.

`resolve` makes the data pipeline tokenise with the encoder's tokenizer and length;
`TextConditioning` holds the encoder (frozen T5 params, or a trainable one's init) and
gives the train step its `text_fn` and the sampler its prompt encodings.
"""
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.data import sources as data_sources
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.models import text as text_lib
from mdm_jax.train import sharding as sharding_lib
from mdm_jax.train.step import no_text, precomputed_text


def resolve(config):
    """Fills what the text config implies for the data config (in place) and checks the
    model's text width. Call before validation; idempotent."""
    text = config.text
    if text.kind == "none":
        return config
    config.data.max_token_length = text.max_length
    if text.kind == "small" and not text.tokenizer:
        # A small encoder learns on the data set's own tokenizer (shapes ships one).
        text.tokenizer = data_sources.describe(config.data).tokenizer
    text_lib.validate(text)
    if text.kind == "precomputed":
        config.data.text_embeddings_dir = text.precomputed_dir
    elif not config.data.tokenizer:
        config.data.tokenizer = text_lib.tokenizer_path(text)
    width = text_lib.feature_dim(text)
    if config.model.conditioning_feature_dim != width:
        raise ValueError(
            f"model.conditioning_feature_dim={config.model.conditioning_feature_dim} but the "
            f"text encoder ({text.kind}) gives {width}-wide features: set "
            f"config.model.conditioning_feature_dim={width}.")
    return config


@dataclasses.dataclass
class TextConditioning:
    config: Any
    module: Optional[Any] = None
    frozen_params: Optional[Any] = None       # a frozen encoder's params, sharded
    frozen_shardings: Optional[Any] = None

    @classmethod
    def create(cls, config, mesh, rules):
        text = config.text
        if text.kind != "t5":
            return cls(text, text_lib.build_text_encoder(text))
        shardings = sharding_lib.tree_shardings(text_lib.abstract_params(text), mesh, rules)
        module, params = text_lib.load_text_encoder(text, shardings=shardings)
        return cls(text, module, params, shardings)

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
        encoder = text_lib.encoder_config(self.config)
        if self.config.kind == "precomputed":
            if self.module is None:
                self.module, self.frozen_params = text_lib.load_text_encoder(encoder)
            params = self.frozen_params
        else:
            params = params["text"] if self.trainable else self.frozen_params
        tokens, mask = tokenizer_lib.tokenize(prompts, text_lib.tokenizer_path(encoder),
                                              encoder.max_length)
        module = self.module
        features = jax.jit(lambda p, t, m: text_lib.encode(module, p, t, m))(
            params, jnp.asarray(tokens), jnp.asarray(mask))
        return features.astype(jnp.float32), jnp.asarray(np.asarray(mask))
