"""Image-text pairs from local files, as CC12M download tools leave them, into tfds.

Sources (in the manual directory, named by comma-separated patterns):
- webdataset tar shards: members KEY.jpg|jpeg|png|webp, KEY.txt (the caption) and
  optionally KEY.json (img2dataset's metadata: original_width/original_height are kept
  as the original size when present);
- TSV files: one `image path<TAB>caption` per line, paths relative to the TSV's folder,
  an optional first line `image<TAB>caption` (or `path<TAB>...`) as header.

A pattern with `{00000..00099}` expands to those names; a name that doesn't exist counts
as a missing shard. Other patterns are globs. What the build skips (missing or unreadable
shards, an image without caption or the reverse, a TSV row whose file is missing) is
counted, each skipped shard named with the reason, and stored in the data set's metadata
(counters.BuildSkips); images themselves are stored as found and checked by the pipeline
(see records.py).
"""
import dataclasses
import glob
import json
import os
import re
import tarfile

import tensorflow_datasets as tfds

from mdm_jax.data import counters, records

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TSV_HEADERS = (b"image", b"path", b"image_path", b"filepath")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclasses.dataclass
class ImageTextConfig(tfds.core.BuilderConfig):
    sources: str = "*.tar,*.tsv"
    validation_sources: str = ""


def builder_config(name="default", sources="*.tar,*.tsv", validation_sources=""):
    return ImageTextConfig(name=name, sources=sources, validation_sources=validation_sources,
                           description=f"image-text pairs from {sources}")


def expand_sources(manual_dir, patterns):
    """(existing files, named files that don't exist), in a stable order."""
    found, missing = [], []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        path = os.path.join(manual_dir, pattern)
        ranged = _RANGE.search(path)
        if ranged:
            first, last = ranged.groups()
            for i in range(int(first), int(last) + 1):
                name = path[:ranged.start()] + str(i).zfill(len(first)) + path[ranged.end():]
                if os.path.exists(name):
                    found.append(name)
                else:
                    missing.append(name)
        elif glob.has_magic(path):
            found.extend(sorted(glob.glob(path)))
        elif os.path.exists(path):
            found.append(path)
        else:
            missing.append(path)
    return found, missing


def _split_member(name):
    """webdataset's convention: the key is the path up to the basename's first dot."""
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(folder, stem), extension.lower()


def _original_size(members, image):
    if "json" in members:
        try:
            meta = json.loads(members["json"])
            width = meta.get("original_width") or meta.get("width")
            height = meta.get("original_height") or meta.get("height")
            if width and height:
                return int(width), int(height)
        except (ValueError, TypeError, AttributeError):
            pass  # metadata is optional; fall back to the image header
    return records.image_size_of(image)


def _sample_record(members, counts):
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_ext is None:
        if "txt" in members:
            counts["skipped_missing_image"] += 1
        return None
    if "txt" not in members:
        counts["skipped_missing_caption"] += 1
        return None
    image = members[image_ext]
    width, height = _original_size(members, image)
    return records.record(image, width, height, caption=members["txt"])


def _ended_cleanly(tar):
    """Whether the archive ends with its end-of-archive block. tarfile stops silently at
    a header cut short, so a truncated shard shows only here."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def read_tar(path, skips):
    """Yields (key, record) of a webdataset shard; counts what it skips in `skips` (a
    counters.BuildSkips). Of a damaged shard, the samples before the damage are kept."""
    counts, current, members, damage, kept = skips.counts, None, {}, None, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, extension = _split_member(info.name)
                if key != current:
                    record = _sample_record(members, counts) if current is not None else None
                    if record is not None:
                        kept += 1
                        yield current, record
                    current, members = key, {}
                members[extension] = tar.extractfile(info).read()
            if not _ended_cleanly(tar):
                damage = "cut short (no end-of-archive block)"
    except (tarfile.TarError, OSError, EOFError) as error:
        # tarfile's messages run over several lines (one per compression tried): the
        # first says enough.
        message = str(error).splitlines()[0].rstrip(":")
        damage = f"unreadable ({type(error).__name__}: {message})"
    if current is not None:
        # The sample read when the damage showed is kept if its image and caption came
        # through whole; if not, the damaged shard's entry already says why it is missing.
        record = _sample_record(members, dict(counts) if damage else counts)
        if record is not None:
            kept += 1
            yield current, record
    if damage:
        skips.skip_shard(path, "skipped_unreadable_shard",
                         f"{damage}; samples kept from before the damage: {kept}")


def read_tsv(path, skips):
    """Yields (key, record) of a TSV of image paths and captions; counts what it skips in
    `skips` (a counters.BuildSkips)."""
    folder, counts = os.path.dirname(path), skips.counts
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as error:
        skips.skip_shard(path, "skipped_unreadable_shard",
                         f"unreadable ({error.strerror or error})")
        return
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        image_path, tab, caption = line.partition(b"\t")
        if number == 0 and image_path.strip().lower() in TSV_HEADERS:
            continue
        if not tab:
            counts["skipped_missing_caption"] += 1
            continue
        full = os.path.join(folder, os.fsdecode(image_path.strip()))
        try:
            with open(full, "rb") as image_file:
                image = image_file.read()
        except OSError:
            counts["skipped_missing_image"] += 1
            continue
        width, height = records.image_size_of(image)
        yield str(number), records.record(image, width, height, caption=caption.rstrip(b"\r"))


class MdmImageText(tfds.core.GeneratorBasedBuilder):
    """Image-text pairs from local webdataset shards and TSV files."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []  # every config is made from its parameters (builder_config)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put webdataset tar shards (KEY.jpg + KEY.txt [+ KEY.json]) and/or TSV files "
        "(image path<TAB>caption) in the manual directory (data.manual_dir).")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=records.features(caption=True), metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits = {"train": self.builder_config.sources}
        if self.builder_config.validation_sources:
            splits["validation"] = self.builder_config.validation_sources
        generators = {}
        # Filled in while the generators run; tfds writes the metadata once they are done.
        self.info.metadata["build_counters"] = {}
        self.info.metadata["skipped_shards"] = {}
        for split, patterns in splits.items():
            files, missing = expand_sources(manual_dir, patterns)
            if not files:
                raise FileNotFoundError(
                    f"No image-text sources match {patterns!r} in {manual_dir}: put tar "
                    "shards or TSV files there, or set data.manual_dir / "
                    "data.image_text.sources to where they are.")
            skips = counters.BuildSkips()
            for path in missing:
                skips.skip_shard(path, "skipped_missing_shard", "missing")
            self.info.metadata["build_counters"][split] = skips.counts
            self.info.metadata["skipped_shards"][split] = skips.shards
            generators[split] = self._generate_examples(manual_dir, files, skips)
        return generators

    def _generate_examples(self, manual_dir, files, skips):
        for path in files:
            relative = os.path.relpath(path, manual_dir)
            read = read_tsv if path.lower().endswith(".tsv") else read_tar
            for key, record in read(path, skips):
                yield f"{relative}/{key}", record


def make_builder(data_dir, name="default", sources="*.tar,*.tsv", validation_sources=""):
    return MdmImageText(
        data_dir=os.path.expanduser(data_dir),
        config=builder_config(name, sources, validation_sources), file_format="array_record")


def build(data_dir, manual_dir, name="default", sources="*.tar,*.tsv", validation_sources=""):
    """Converts the sources in manual_dir (if not already done); returns the data set folder."""
    builder = make_builder(data_dir, name, sources, validation_sources)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir)))
    return builder.data_dir
