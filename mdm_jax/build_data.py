"""Builds the data set a data config names (shapes, image_text, imagenet, video or
moving_shapes).

    python -m mdm_jax.build_data --data.dataset=shapes --data.data_dir=~/tensorflow_datasets \
        --data.shapes.image_size=64 --data.shapes.num_examples=10000
    python -m mdm_jax.build_data --data.dataset=image_text --data.manual_dir=/data/cc12m
    python -m mdm_jax.build_data --data.dataset=imagenet --data.manual_dir=/data/imagenet
    python -m mdm_jax.build_data --data.dataset=video --data.manual_dir=/data/webvid \
        --data.video.csv=results_2M_train.csv --data.video.image_size=256
    python -m mdm_jax.build_data --data.dataset=moving_shapes --data.moving_shapes.num_frames=16

The flags are the data config's keys, as training takes them under --config.data.
Building again is a no-op once the data set exists.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.data import sources
from mdm_jax.data.config import get_data_config

_DATA = config_flags.DEFINE_config_dict("data", get_data_config(), "The data config.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "shapes, moving_shapes, video: processes generating scenes or decoding videos "
    "(default: every core).")


def main(argv):
    del argv
    path = sources.build(_DATA.value, _NUM_PROCESSES.value)
    logging.info("Data set ready in %s", path)
    print(path)


if __name__ == "__main__":
    app.run(main)
