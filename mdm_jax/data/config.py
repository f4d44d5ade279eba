"""The data config: defaults (`get_data_config`) and the checks every entrypoint runs
(`validate`, and `check_text_inputs` for the text settings the pipeline is given), whose
messages name the fix. Keys are documented in docs/data.md.

The text settings (tokenizer, caption length, precomputed embeddings) are not data keys:
they belong to the text encoder, and the pipeline takes them as a `transforms.TextInputs`.
"""
import os

import ml_collections
from ml_collections import config_dict

DATASETS = ("shapes", "image_text", "imagenet", "synthetic", "video", "moving_shapes")
# Data sets of clips: each has a config section of the same name whose image_size and
# num_frames say what its records store.
VIDEO_DATASETS = ("video", "moving_shapes")
CROPS = ("center", "random")
CAPTION_OVERFLOW = ("truncate", "filter")


def get_data_config():
    c = ml_collections.ConfigDict()
    c.dataset = "shapes"
    c.data_dir = "~/tensorflow_datasets"  # tfds root holding the built data sets
    c.manual_dir = ""  # image_text / imagenet / video sources; '' = <data_dir>/downloads/manual
    c.split = "train"
    c.image_size = 256  # side of the square images the pipeline returns (the top level)
    # Video data sets: frames of each clip the pipeline returns (the first ones stored);
    # None or 0 = all stored, 1 = plain images (each clip's first frame).
    c.num_frames = config_dict.placeholder(int)
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
    # video: clips decoded from local files listed in a CSV (WebVid's layout) in
    # manual_dir; `name` tells variants apart in data_dir, the others say what is stored:
    # num_frames frames a clip, every frame_stride-th of the video, image_size pixels square.
    c.video = ml_collections.ConfigDict(dict(
        name="default", csv="results.csv", image_size=256, num_frames=16, frame_stride=4))
    # moving_shapes: the generated video data set, one tfds config per (image_size,
    # num_frames, num_examples, seed).
    c.moving_shapes = ml_collections.ConfigDict(dict(
        image_size=64, num_frames=16, num_examples=10_000, seed=0))
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


def stored_frames(config):
    """Frames each record of config's data set stores; 0 for a data set of images."""
    return config[config.dataset].num_frames if config.dataset in VIDEO_DATASETS else 0


def clip_frames(config):
    """Frames T of each example's `images` from config's data set: 0 when they are images
    [S, S, 3] (an image data set, or clips read with data.num_frames=1), else T >= 2 for
    clips [T, S, S, 3]."""
    frames = config.num_frames or stored_frames(config)
    return frames if frames > 1 else 0


def _check_frames(config):
    frames, dataset = config.num_frames, config.dataset
    if frames is not None and frames < 0:
        raise ValueError(f"data.num_frames must be >= 1, or 0 or None for all stored "
                         f"frames; got {frames}.")
    if dataset not in VIDEO_DATASETS:
        if frames and frames > 1:
            raise ValueError(
                f"data.num_frames={frames} needs a video data set ({', '.join(VIDEO_DATASETS)})"
                f"; data.dataset={dataset!r} holds images: leave data.num_frames unset.")
        return
    stored = config[dataset]
    if frames and frames > stored.num_frames:
        raise ValueError(
            f"data.num_frames={frames} but the {dataset} data set stores {stored.num_frames} "
            f"frames a clip: set data.num_frames to at most {stored.num_frames}, or build "
            f"longer clips (--data.{dataset}.num_frames={frames}).")
    if config.image_size > stored.image_size:
        raise ValueError(
            f"data.image_size={config.image_size} but the {dataset} data set stores "
            f"{stored.image_size}-pixel frames: set data.image_size to at most "
            f"{stored.image_size}, or build it at that size "
            f"(--data.{dataset}.image_size={config.image_size}).")


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
    _check_frames(config)
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
        if config.dataset in ("shapes", "moving_shapes"):
            raise ValueError(
                f"The {config.dataset} data set's tokenizer {info.tokenizer} is missing: run "
                f"`{sources.build_command(config)}`, which trains it.")
        raise ValueError(
            f"Data set {config.dataset!r} has captions but text.tokenizer is empty: set it "
            f"to a sentencepiece model (T5's spiece.model works) or train one with {train}.")
    return text
