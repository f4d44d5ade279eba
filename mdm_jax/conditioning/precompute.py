"""Runs a frozen T5 encoder over a data set's captions and writes the embeddings.

The command is `python -m mdm_jax.precompute_text`. A training config with
text.kind='precomputed' and text.precomputed_dir=<output_dir> then reads these instead of
running the encoder. The on-disk format is in mdm_jax/data/text_embeddings.py and
docs/text.md.
"""
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mdm_jax.data import counters, text_embeddings, transforms
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.models import text


def precompute_embeddings(captions, text_config, output_dir, batch_size=64, num_shards=1,
                          storage_dtype="bfloat16"):
    """Encodes captions[i] for every i into output_dir; returns the metadata written.

    captions: a sequence of str, indexed like the data set's examples.
    text_config: a 't5' text encoder config (text.text_encoder_config).
    """
    text.validate(text_config)
    if text_config.kind != "t5":
        raise ValueError(f"Precomputing needs a frozen encoder: text.kind='t5', not "
                         f"{text_config.kind!r}.")
    module, params = text.load_text_encoder(text_config)
    tokenizer = tokenizer_lib.load(text.tokenizer_path(text_config))
    out_dtype = jnp.dtype(storage_dtype)
    encode = jax.jit(lambda p, t, m: text.encode(module, p, t, m).astype(out_dtype))

    def run(texts):
        """(embeddings, lengths) of up to batch_size texts; one compiled batch shape."""
        padded = list(texts) + [""] * (batch_size - len(texts))
        tokens, mask = tokenizer_lib.tokenize(padded, tokenizer, text_config.max_length)
        out = np.asarray(encode(params, tokens, mask))
        return out[:len(texts)], mask[:len(texts)].sum(axis=1)

    # Stored so that sampling can encode prompts with the same encoder
    # (conditioning.text.precomputed_source_config).
    stored_config = text_config.to_dict()
    for section, key in ((stored_config, "tokenizer"), (stored_config["t5"], "checkpoint_dir")):
        if section[key]:
            section[key] = os.path.abspath(section[key])
    writer = text_embeddings.Writer(output_dir, len(captions), text.feature_dim(text_config),
                               text_config.max_length, storage_dtype, num_shards, stored_config)
    for start in range(0, len(captions), batch_size):
        batch = [captions[i] for i in range(start, min(start + batch_size, len(captions)))]
        out, lengths = run(batch)
        for j, (embedding, n) in enumerate(zip(out, lengths)):
            writer.write(start + j, embedding[:n])
        logging.log_every_n_seconds(logging.INFO, "Encoded %d of %d captions.", 30,
                                    start + len(batch), len(captions))
    out, lengths = run([""])
    writer.close(out[0][:lengths[0]])
    return text_embeddings.read_metadata(output_dir)


class DatasetCaptions(Sequence):
    """Captions of a prepared tfds data set (a folder with dataset_info.json), as str.

    Bytes are decoded by the input pipeline's own function, so that precomputed and
    live encodings tokenize the same text.
    """

    def __init__(self, dataset_dir, split, key):
        import tensorflow_datasets as tfds
        self._source = tfds.builder_from_directory(dataset_dir).as_data_source(split=split)
        self._key = key

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        if not 0 <= index < len(self):  # the source raises ValueError, which ends no loop
            raise IndexError(f"caption {index} of {len(self)}")
        return transforms.decode_caption(self._source[index][self._key], counters.zeros())
