"""Encodes a data set's captions with a frozen T5 once, for text.kind='precomputed'.

    python -m mdm_jax.precompute_text \
        --text.t5.checkpoint_dir=/models/flan-t5-xl --text.dtype=bfloat16 \
        --dataset_dir=/data/tfds/cc12m/1.0.0 --split=train --output_dir=/data/cc12m_flan_t5_xl

Then train with --config.text.kind=precomputed --config.text.precomputed_dir=<output_dir>.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.conditioning import precompute
from mdm_jax.data import text_embeddings
from mdm_jax.models import text

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
flags.DEFINE_enum("storage_dtype", "bfloat16", text_embeddings.STORAGE_DTYPES,
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
        captions = precompute.DatasetCaptions(f.dataset_dir, f.split, f.caption_key)
    metadata = precompute.precompute_embeddings(captions, f.text, f.output_dir, f.batch_size,
                                     f.num_shards, f.storage_dtype)
    logging.info("Wrote %d embeddings of width %d to %s.", metadata["num_examples"],
                 metadata["width"], f.output_dir)


if __name__ == "__main__":
    app.run(main)
