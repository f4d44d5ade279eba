"""Trains a sentencepiece tokenizer on the captions of a built data set.

    python -m mdm_jax.train_tokenizer --data.dataset=image_text --output=/data/spm.model

The data set is the one the --data flags name (the data config's keys); the model gets
T5's special ids (pad 0, EOS 1, unk 2). Point text.tokenizer at the output to use it.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.data import sources
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.config import get_data_config

_DATA = config_flags.DEFINE_config_dict("data", get_data_config(), "The data config.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the model.", required=True)
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 8000, "Largest vocabulary; a small corpus yields fewer pieces.")
_MAX_CAPTIONS = flags.DEFINE_integer(
    "max_captions", 1_000_000, "Train on at most this many captions (the first ones).")


def main(argv):
    del argv
    captions = sources.captions(_DATA.value, _MAX_CAPTIONS.value)
    path = tokenizer_lib.train(captions, _OUTPUT.value, vocab_size=_VOCAB_SIZE.value)
    logging.info("Wrote %s (%d pieces)", path, tokenizer_lib.Tokenizer(path).vocab_size)
    print(path)


if __name__ == "__main__":
    app.run(main)
