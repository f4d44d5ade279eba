"""Runs a frozen T5 encoder over a data set's captions and writes the embeddings.

  python -m mdm_jax.models.text.precompute \
      --text.t5.checkpoint_dir=/models/flan-t5-xl --text.dtype=bfloat16 \
      --dataset_dir=/data/tfds/cc12m/1.0.0 --split=train --output_dir=/data/cc12m_flan_t5_xl

A training config with text.kind='precomputed' and text.precomputed_dir=<output_dir> then
reads these instead of running the encoder. The on-disk format is in embeddings.py and
docs/text.md.
"""
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.models import text
from mdm_jax.models.text import embeddings


def precompute_embeddings(captions, text_config, output_dir, batch_size=64, num_shards=1,
                          storage_dtype="bfloat16"):
    """Encodes captions[i] for every i into output_dir; returns the metadata written.

    captions: a sequence of str, indexed like the data set's examples.
    text_config: a 't5' text encoder config (text.text_encoder_config).
    """
    from mdm_jax.data import tokenizer as tokenizer_lib  # the data package owns tokenization
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

    # Stored so that sampling can encode prompts with the same encoder (text.encoder_config).
    stored_config = text_config.to_dict()
    for section, key in ((stored_config, "tokenizer"), (stored_config["t5"], "checkpoint_dir")):
        if section[key]:
            section[key] = os.path.abspath(section[key])
    writer = embeddings.Writer(output_dir, len(captions), text.feature_dim(text_config),
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
    return embeddings.read_metadata(output_dir)


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
        from mdm_jax.data import counters, transforms
        if not 0 <= index < len(self):  # the source raises ValueError, which ends no loop
            raise IndexError(f"caption {index} of {len(self)}")
        return transforms.decode_caption(self._source[index][self._key], counters.zeros())


def _define_flags():
    """Flags of the command; defined only when run as one, not when imported."""
    config_flags.DEFINE_config_dict("text", text.text_encoder_config(kind="t5"),
                                    "Text encoder config (text.t5.checkpoint_dir, ...).")
    flags.DEFINE_string("output_dir", None, "Directory to write.", required=True)
    flags.DEFINE_string("dataset_dir", None, "Prepared tfds data set folder.")
    flags.DEFINE_string("split", "train", "Split of the data set.")
    flags.DEFINE_string("caption_key", "caption", "Feature holding the caption.")
    flags.DEFINE_string("captions_file", None,
                        "Instead of a data set: a text file, one caption a line.")
    flags.DEFINE_integer("batch_size", 64, "Captions per encoder call.")
    flags.DEFINE_integer("num_shards", 1, "Number of array_record files.")
    flags.DEFINE_enum("storage_dtype", "bfloat16", embeddings.STORAGE_DTYPES,
                      "dtype of the stored embeddings.")


def main(argv):
    del argv
    f = flags.FLAGS
    if bool(f.dataset_dir) == bool(f.captions_file):
        raise app.UsageError("Give exactly one of --dataset_dir or --captions_file.")
    if f.captions_file:
        with open(f.captions_file, encoding="utf-8") as lines:
            captions = lines.read().splitlines()
    else:
        captions = DatasetCaptions(f.dataset_dir, f.split, f.caption_key)
    metadata = precompute_embeddings(captions, f.text, f.output_dir, f.batch_size,
                                     f.num_shards, f.storage_dtype)
    logging.info("Wrote %d embeddings of width %d to %s.", metadata["num_examples"],
                 metadata["width"], f.output_dir)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
