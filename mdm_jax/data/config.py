"""The data config: defaults (`get_data_config`) and the checks every entrypoint runs
(`validate`), whose messages name the fix. Keys are documented in docs/data.md.
"""
import os

import ml_collections
from ml_collections import config_dict

DATASETS = ("shapes", "image_text", "imagenet", "synthetic")
CROPS = ("center", "random")
CAPTION_OVERFLOW = ("truncate", "filter")


def get_data_config():
    c = ml_collections.ConfigDict()
    c.dataset = "shapes"
    c.data_dir = "~/tensorflow_datasets"  # tfds root holding the built data sets
    c.manual_dir = ""  # image_text / imagenet sources; '' = <data_dir>/downloads/manual
    c.split = "train"
    c.image_size = 256  # side of the square images the pipeline returns (the top level)
    c.crop = "center"
    c.random_flip = False  # off by default: a flip contradicts 'on the left' in a caption
    c.max_image_pixels = 64_000_000  # larger images (after JPEG draft scaling) are skipped
    c.tokenizer = ""  # sentencepiece model; '' = the data set's own (shapes ships one)
    c.max_token_length = 128
    # Precomputed text embeddings (python -m mdm_jax.conditioning.precompute) read instead of
    # tokens; '' = tokenise. Training sets it from text.precomputed_dir.
    c.text_embeddings_dir = ""
    c.caption_overflow = "truncate"
    c.caption_dropout = 0.1  # probability of training on the empty caption instead
    c.label_dropout = 0.1  # probability of label -1 (no label) instead
    c.seed = 0  # shuffle and augmentation seed (make_iterator's seed overrides it)
    c.shuffle = True
    c.num_epochs = config_dict.placeholder(int)  # None: repeat forever
    c.num_workers = 0  # grain worker processes decoding in parallel; 0 = in this process
    c.read_threads = 4  # threads per process reading and decoding records
    c.prefetch_buffer = 2  # batches each worker prepares ahead
    # The shapes variant to read (or build): one tfds config per (image_size, count, seed,
    # and variant: shapes.VARIANT_KEYS); the demo's is easier (configs/demo.py).
    c.shapes = ml_collections.ConfigDict(dict(image_size=256, num_examples=50_000, seed=0,
                                              max_objects=3, min_size="small",
                                              plain_background=False, centred=False,
                                              upright=False))
    # image_text: `name` tells variants apart in data_dir; sources are patterns in manual_dir.
    c.image_text = ml_collections.ConfigDict(dict(
        name="default", sources="*.tar,*.tsv", validation_sources=""))
    # synthetic: random tensors with every field, for benchmarks; nothing to build.
    c.synthetic = ml_collections.ConfigDict(dict(
        num_examples=10_000, vocab_size=32_128, num_classes=1000))
    return c


def _choice(config, key, choices):
    if config[key] not in choices:
        raise ValueError(f"data.{key} must be one of {', '.join(choices)}; "
                         f"got {config[key]!r}.")


def _in_range(config, key, low, high=None):
    value = config[key]
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"data.{key} must be {bound}; got {value!r}.")


def validate(config):
    """Raises ValueError naming the fix for a config that can't work; returns the config."""
    from mdm_jax.data import sources  # noqa: PLC0415 (sources imports tfds, slow to load)

    _choice(config, "dataset", DATASETS)
    _choice(config, "crop", CROPS)
    _choice(config, "caption_overflow", CAPTION_OVERFLOW)
    _in_range(config, "image_size", 8, 4096)
    _in_range(config, "max_token_length", 2)
    _in_range(config, "max_image_pixels", 1)
    _in_range(config, "caption_dropout", 0.0, 1.0)
    _in_range(config, "label_dropout", 0.0, 1.0)
    _in_range(config, "num_workers", 0)
    _in_range(config, "read_threads", 1)
    _in_range(config, "prefetch_buffer", 1)
    if not 0 <= config.seed < 2**31:
        raise ValueError(f"data.seed must be in [0, 2**31); got {config.seed}.")
    if config.num_epochs is not None and config.num_epochs < 1:
        raise ValueError(f"data.num_epochs must be >= 1, or None to repeat forever; "
                         f"got {config.num_epochs}.")
    if config.dataset == "synthetic":
        return config
    info = sources.describe(config)  # raises naming the build command if not built
    if info.has_caption and not os.path.isfile(info.tokenizer):
        train = (f"`python -m mdm_jax.train_tokenizer {sources.flags(config)} "
                 "--output=PATH`")
        if config.tokenizer:
            raise ValueError(
                f"data.tokenizer {config.tokenizer!r} does not exist: point it at a "
                f"sentencepiece model (T5's spiece.model works) or train one with {train}.")
        if config.dataset == "shapes":
            raise ValueError(
                f"The shapes data set's tokenizer {info.tokenizer} is missing: run "
                f"`{sources.build_command(config)}`, which trains it.")
        raise ValueError(
            f"Data set {config.dataset!r} has captions but data.tokenizer is empty: set it "
            f"to a sentencepiece model (T5's spiece.model works) or train one with {train}.")
    return config
