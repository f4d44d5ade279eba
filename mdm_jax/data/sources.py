"""From a data config to the built tfds data set: its builder, what its records hold,
the command that builds it, and a random-access source of its records.
"""
import dataclasses
import itertools
import os

from mdm_jax.data import (counters, image_text, imagenet, records, shapes, shapes_render,
                          synthetic, transforms)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    has_caption: bool
    has_label: bool
    class_names: tuple  # () for data sets without labels
    tokenizer: str  # resolved tokenizer path ('' when the data set has no captions)
    num_examples: int  # in the configured split
    build_counters: dict  # what the builder skipped, {counter name: count}


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
    raise ValueError(f"Data set {config.dataset!r} has no tfds builder.")


def flags(config):
    """Command-line flags that select config's data set (for commands in messages)."""
    out = [f"--data.dataset={config.dataset}", f"--data.data_dir={config.data_dir}"]
    if config.dataset == "shapes":
        out += [f"--data.shapes.{k}={v}" for k, v in config.shapes.items()]
    if config.dataset in ("image_text", "imagenet"):
        out.append(f"--data.manual_dir={config.manual_dir or 'DIR_WITH_SOURCES'}")
    if config.dataset == "image_text":
        out += [f"--data.image_text.{k}='{v}'" for k, v in config.image_text.items() if v]
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
    tokenizer = os.path.expanduser(config.tokenizer)
    if has_caption and not tokenizer and config.dataset == "shapes":
        tokenizer = os.path.join(builder.data_dir, shapes.TOKENIZER_FILE)
    class_names = ()
    if records.LABEL in features:
        class_names = (shapes_render.CLASS_NAMES if config.dataset == "shapes"
                       else imagenet.class_descriptions())
    metadata = builder.info.metadata or {}
    build_counters = dict(metadata.get("build_counters", {}).get(config.split, {}))
    return SourceInfo(has_caption=has_caption, has_label=records.LABEL in features,
                      class_names=tuple(class_names), tokenizer=tokenizer if has_caption else "",
                      num_examples=splits[config.split].num_examples,
                      build_counters=build_counters)


def open_source(config):
    """(random-access source of records, SourceInfo)."""
    if config.dataset == "synthetic":
        return synthetic.SyntheticSource(config), describe(config)
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
