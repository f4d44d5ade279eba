"""Builds the data set a data config names (shapes, image_text or imagenet).

    python -m mdm_jax.data.build --data.dataset=shapes --data.data_dir=~/tensorflow_datasets \
        --data.shapes.image_size=64 --data.shapes.num_examples=10000
    python -m mdm_jax.data.build --data.dataset=image_text --data.manual_dir=/data/cc12m
    python -m mdm_jax.data.build --data.dataset=imagenet --data.manual_dir=/data/imagenet

The flags are the data config's keys, as training takes them under --config.data.
Building again is a no-op once the data set exists.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.data import image_text, imagenet, shapes, sources
from mdm_jax.data.config import get_data_config

_DATA = config_flags.DEFINE_config_dict("data", get_data_config(), "The data config.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "shapes: processes generating scenes (default: every core).")


def manual_dir(config):
    """data.manual_dir, or tfds's default <data_dir>/downloads/manual."""
    return os.path.expanduser(config.manual_dir) or os.path.join(
        sources.data_dir(config), "downloads", "manual")


def build(config, num_processes=None):
    """Builds config's data set if it isn't built yet; returns its folder."""
    if config.dataset == "shapes":
        cfg = config.shapes
        return shapes.build(sources.data_dir(config), cfg.image_size, cfg.num_examples,
                            cfg.seed, num_processes=num_processes, **shapes.variant(cfg))
    if config.dataset == "image_text":
        cfg = config.image_text
        return image_text.build(sources.data_dir(config), manual_dir(config), cfg.name,
                                cfg.sources, cfg.validation_sources)
    if config.dataset == "imagenet":
        return imagenet.build(sources.data_dir(config), manual_dir(config))
    raise ValueError(f"data.dataset={config.dataset!r} has nothing to build; choose "
                     "shapes, image_text or imagenet.")


def main(argv):
    del argv
    path = build(_DATA.value, _NUM_PROCESSES.value)
    logging.info("Data set ready in %s", path)
    print(path)


if __name__ == "__main__":
    app.run(main)
