"""Builds the data set a data config names (shapes, image_text or imagenet).

    python -m mdm_jax.build_data --data.dataset=shapes --data.data_dir=~/tensorflow_datasets \
        --data.shapes.image_size=64 --data.shapes.num_examples=10000
    python -m mdm_jax.build_data --data.dataset=image_text --data.manual_dir=/data/cc12m
    python -m mdm_jax.build_data --data.dataset=imagenet --data.manual_dir=/data/imagenet

The flags are the data config's keys, as training takes them under --config.data.
Building again is a no-op once the data set exists.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.data import sources
from mdm_jax.data.config import get_data_config

_DATA = config_flags.DEFINE_config_dict("data", get_data_config(), "The data config.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "shapes: processes generating scenes (default: every core).")


def main(argv):
    del argv
    path = sources.build(_DATA.value, _NUM_PROCESSES.value)
    logging.info("Data set ready in %s", path)
    print(path)


if __name__ == "__main__":
    app.run(main)
