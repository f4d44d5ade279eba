"""From a data config to the built tfds data set (shapes, image_text, imagenet, video or
moving_shapes): its builder, building it (`build`, behind `python -m mdm_jax.build_data`)
and the summary of what the build skipped, what its records hold, the command that builds
it, and a random-access source of its records.
"""
import dataclasses
import itertools
import os
import shlex

from absl import logging

from mdm_jax.data import (
    counters,
    image_text,
    imagenet,
    moving_shapes,
    records,
    shapes,
    shapes_render,
    synthetic,
    transforms,
    video,
)

# The data sets with their own tokenizer, in the data set's folder.
_OWN_TOKENIZER = {"shapes": shapes.TOKENIZER_FILE, "moving_shapes": moving_shapes.TOKENIZER_FILE}


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    has_caption: bool
    has_label: bool
    class_names: tuple  # () for data sets without labels
    tokenizer: str  # the data set's own tokenizer (shapes ships one); '' if it has none
    num_examples: int  # in the configured split
    build_counters: dict  # what the builder skipped, {counter name: count}
    num_frames: int = 0  # frames a record stores (video data sets); 0 for images


def data_dir(config):
    return os.path.abspath(os.path.expanduser(config.data_dir))


def make_builder(config):
    """The tfds builder of config.dataset (not synthetic), built or not."""
    if config.dataset == "shapes":
        cfg = config.shapes
        return shapes.make_builder(data_dir(config), cfg.image_size, cfg.num_examples,
                                   cfg.seed, **shapes.variant(cfg))
    if config.dataset == "image_text":
        cfg = config.image_text
        return image_text.make_builder(data_dir(config), cfg.name, cfg.sources,
                                       cfg.validation_sources)
    if config.dataset == "imagenet":
        return imagenet.make_builder(data_dir(config))
    if config.dataset == "video":
        cfg = config.video
        return video.make_builder(data_dir(config), cfg.name, cfg.csv, cfg.image_size,
                                  cfg.num_frames, cfg.frame_stride)
    if config.dataset == "moving_shapes":
        cfg = config.moving_shapes
        return moving_shapes.make_builder(data_dir(config), cfg.image_size, cfg.num_frames,
                                          cfg.num_examples, cfg.seed)
    raise ValueError(f"Data set {config.dataset!r} has no tfds builder.")


def manual_dir(config):
    """data.manual_dir, or tfds's default <data_dir>/downloads/manual."""
    return os.path.expanduser(config.manual_dir) or os.path.join(
        data_dir(config), "downloads", "manual")


def build(config, num_processes=None):
    """Builds config's data set if it isn't built yet; logs what the build skipped (one
    warning naming each skipped shard and counting each kind of skipped record, or one
    info line if nothing was); returns the data set's folder."""
    if config.dataset == "shapes":
        cfg = config.shapes
        folder = shapes.build(data_dir(config), cfg.image_size, cfg.num_examples, cfg.seed,
                              num_processes=num_processes, **shapes.variant(cfg))
    elif config.dataset == "image_text":
        cfg = config.image_text
        folder = image_text.build(data_dir(config), manual_dir(config), cfg.name,
                                  cfg.sources, cfg.validation_sources)
    elif config.dataset == "imagenet":
        folder = imagenet.build(data_dir(config), manual_dir(config))
    elif config.dataset == "video":
        cfg = config.video
        folder = video.build(data_dir(config), manual_dir(config), cfg.name, cfg.csv,
                             cfg.image_size, cfg.num_frames, cfg.frame_stride,
                             num_processes=num_processes)
    elif config.dataset == "moving_shapes":
        cfg = config.moving_shapes
        folder = moving_shapes.build(data_dir(config), cfg.image_size, cfg.num_frames,
                                     cfg.num_examples, cfg.seed, num_processes=num_processes)
    else:
        raise ValueError(f"data.dataset={config.dataset!r} has nothing to build; choose "
                         "shapes, image_text, imagenet, video or moving_shapes.")
    summary = build_summary(config)
    (logging.warning if summary.skipped else logging.info)("%s", summary)
    return folder


def build_summary(config):
    """counters.BuildSummary of config's built data set: what its build skipped."""
    builder = make_builder(config)
    metadata = builder.info.metadata or {}
    return counters.BuildSummary(
        dataset=config.dataset, folder=builder.data_dir,
        num_examples={name: split.num_examples for name, split in builder.info.splits.items()},
        build_counters=dict(metadata.get("build_counters", {})),
        skipped_shards=dict(metadata.get("skipped_shards", {})))


def flags(config):
    """Command-line flags that select config's data set (for commands in messages)."""
    out = [f"--data.dataset={config.dataset}", f"--data.data_dir={config.data_dir}"]
    if config.dataset == "shapes":
        out += [f"--data.shapes.{k}={v}" for k, v in config.shapes.items()]
    if config.dataset == "moving_shapes":
        out += [f"--data.moving_shapes.{k}={v}" for k, v in config.moving_shapes.items()]
    if config.dataset in ("image_text", "imagenet", "video"):
        out.append(f"--data.manual_dir={config.manual_dir or 'DIR_WITH_SOURCES'}")
    if config.dataset == "image_text":
        out += [f"--data.image_text.{k}='{v}'" for k, v in config.image_text.items() if v]
    if config.dataset == "video":
        out += [f"--data.video.{k}={shlex.quote(str(v))}" for k, v in config.video.items()]
    return " ".join(out)


def build_command(config):
    return f"python -m mdm_jax.build_data {flags(config)}"


def _is_built(builder):
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def describe(config):
    """SourceInfo of the configured data set; ValueError naming the build command if the
    data set (or the split) isn't there."""
    if config.dataset == "synthetic":
        cfg = config.synthetic
        return SourceInfo(has_caption=True, has_label=True,
                          class_names=tuple(f"class {i}" for i in range(cfg.num_classes)),
                          tokenizer="", num_examples=cfg.num_examples, build_counters={})
    return _describe(config, make_builder(config))


def _describe(config, builder):
    if not _is_built(builder):
        raise ValueError(f"Data set {config.dataset!r} is not built in {data_dir(config)} "
                         f"(no {builder.data_dir}): run `{build_command(config)}`.")
    splits = builder.info.splits
    if config.split not in splits:
        raise ValueError(f"Data set {config.dataset!r} has no split {config.split!r}; "
                         f"data.split must be one of {', '.join(sorted(splits))}.")
    features = builder.info.features
    has_caption = records.CAPTION in features
    tokenizer = ""
    if config.dataset in _OWN_TOKENIZER:
        tokenizer = os.path.join(builder.data_dir, _OWN_TOKENIZER[config.dataset])
    class_names = ()
    if records.LABEL in features:
        class_names = (shapes_render.CLASS_NAMES if config.dataset in ("shapes", "moving_shapes")
                       else imagenet.class_descriptions())
    metadata = builder.info.metadata or {}
    build_counters = dict(metadata.get("build_counters", {}).get(config.split, {}))
    num_frames = features[records.FRAMES].shape[0] if records.FRAMES in features else 0
    return SourceInfo(has_caption=has_caption, has_label=records.LABEL in features,
                      class_names=tuple(class_names), tokenizer=tokenizer,
                      num_examples=splits[config.split].num_examples,
                      build_counters=build_counters, num_frames=num_frames)


def open_source(config, text=None):
    """(random-access source of records, SourceInfo). text: the pipeline's TextInputs,
    which says how many tokens synthetic examples hold (None: none)."""
    if config.dataset == "synthetic":
        max_length = text.max_length if text is not None else 0
        return synthetic.SyntheticSource(config, max_length), describe(config)
    builder = make_builder(config)
    return builder.as_data_source(split=config.split), _describe(config, builder)


def captions(config, limit):
    """Up to `limit` non-empty caption texts of config's data set and split, in stored
    order (what a tokenizer is trained on)."""
    source, info = open_source(config)
    if config.dataset == "synthetic" or not info.has_caption:
        raise ValueError(f"Data set {config.dataset!r} has no captions to train a tokenizer on.")
    texts = (transforms.decode_caption(source[i][records.CAPTION], counters.zeros())
             for i in range(len(source)))
    return itertools.islice((t for t in texts if t.strip()), limit)
