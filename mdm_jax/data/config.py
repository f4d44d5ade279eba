"""The data config: defaults (`get_data_config`) and the checks every entrypoint runs
(`validate`, and `check_text_inputs` for the text settings the pipeline is given), whose
messages name the fix. Keys are documented in docs/data.md.

The text settings (tokenizer, caption length, precomputed embeddings) are not data keys:
they belong to the text encoder, and the pipeline takes them as a `transforms.TextInputs`.
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
    if config.dataset != "synthetic":
        sources.describe(config)  # raises naming the build command if not built
    return config


def check_text_inputs(config, text):
    """Raises ValueError naming the fix if the pipeline can't give `text` (a
    transforms.TextInputs, or None for no text) from config's data set; returns text."""
    from mdm_jax.data import sources, text_embeddings  # noqa: PLC0415 (as in validate)

    if text is None:
        return text
    if text.max_length < 2:  # EOS and at least one caption token
        raise ValueError(f"text.max_length must be >= 2; got {text.max_length}.")
    info = sources.describe(config)
    if not info.has_caption:
        raise ValueError(f"Data set {config.dataset!r} has no captions to read text from: "
                         "train without text (text.kind='none') or on a data set with "
                         "captions.")
    if text.embeddings_dir:
        if config.dataset == "synthetic":
            raise ValueError("Synthetic data has no precomputed text embeddings: leave "
                             "text.precomputed_dir empty for it.")
        stored = text_embeddings.read_metadata(text.embeddings_dir)["max_length"]
        if stored != text.max_length:
            raise ValueError(
                f"text.max_length={text.max_length} but the embeddings in "
                f"{text.embeddings_dir} hold {stored} tokens a caption: set "
                f"text.max_length={stored}, or precompute them again at this length.")
        return text
    if config.dataset == "synthetic":  # random tokens, no tokenizer
        return text
    tokenizer = text.tokenizer_path(info)
    if not os.path.isfile(tokenizer):
        train = (f"`python -m mdm_jax.train_tokenizer {sources.flags(config)} "
                 "--output=PATH`")
        if text.tokenizer:
            raise ValueError(
                f"text.tokenizer {text.tokenizer!r} does not exist: point it at a "
                f"sentencepiece model (T5's spiece.model works) or train one with {train}.")
        if config.dataset == "shapes":
            raise ValueError(
                f"The shapes data set's tokenizer {info.tokenizer} is missing: run "
                f"`{sources.build_command(config)}`, which trains it.")
        raise ValueError(
            f"Data set {config.dataset!r} has captions but text.tokenizer is empty: set it "
            f"to a sentencepiece model (T5's spiece.model works) or train one with {train}.")
    return text
