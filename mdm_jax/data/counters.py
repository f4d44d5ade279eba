"""Names and bookkeeping of the bad-record counters.

A record the pipeline cannot use whole is converted (and kept) or skipped, and counted
under one of READ_COUNTERS. Builders count what they skip while converting sources
(BUILD_COUNTERS, in a BuildSkips that also names each skipped shard or video and why) and
store both in the data set's tfds metadata; a BuildSummary of them ends every build. The
pipeline reports both kinds of counts, cumulatively, in every batch (see pipeline.py and
docs/data.md).
"""
import dataclasses

import numpy as np

# Counted while reading, per record (in whichever process decodes it).
READ_COUNTERS = (
    "corrupt_image",           # skipped: not an image, truncated, or failed to decode
    "skipped_enormous",        # skipped: more pixels than data.max_image_pixels
    "upscaled_small",          # kept: shorter side below image_size, upscaled
    "converted_cmyk",          # kept: CMYK (or YCCK) converted to RGB
    "converted_grey",          # kept: greyscale or black-and-white converted to RGB
    "converted_palette",       # kept: palette image converted to RGB
    "converted_alpha",         # kept: transparency composited onto white
    "converted_16bit",         # kept: 16 bits per channel reduced to 8
    "converted_caption_utf8",  # kept: caption bytes not valid UTF-8, bad bytes replaced
    "skipped_empty_caption",   # skipped: caption empty or only whitespace
    "caption_truncated",       # kept: caption tokens cut to TextInputs.max_length
    "caption_filtered",        # skipped: too many tokens and data.caption_overflow='filter'
    "skipped_error",           # skipped: any other error while processing the record
)

# Counted once by a builder, stored in the data set's metadata under "build_counters".
# The image_text builder's:
SHARD_COUNTERS = (
    "skipped_missing_shard",    # a listed tar or TSV file does not exist
    "skipped_unreadable_shard",  # a tar or TSV file that could not be read (to its end)
    "skipped_missing_caption",  # an image in a tar without its KEY.txt
    "skipped_missing_image",    # a caption in a tar without an image, or a TSV row's missing file
)
# The video builder's, one for each video of its CSV that it skips:
VIDEO_COUNTERS = (
    "skipped_missing_video",     # the row's file does not exist (or the row names none)
    "skipped_unreadable_video",  # not a video, damaged, or failed to decode
    "skipped_short_video",       # fewer than num_frames * frame_stride frames
    "skipped_small_video",       # wrong-sized: shorter side below the data set's image_size
)
BUILD_COUNTERS = SHARD_COUNTERS + VIDEO_COUNTERS
# A video build names this many skipped files a split (and counts all): a big CSV can
# miss thousands, which would swamp the summary and the data set's metadata.
MAX_NAMED_FILES = 100

READ_INDEX = {name: i for i, name in enumerate(READ_COUNTERS)}
# Field of each example (int32 [len(READ_COUNTERS)]) counting the records its worker
# dropped or converted since its previous example; the pipeline sums and removes it.
FIELD = "_bad_records"


class Skip(Exception):
    """The record can't be used; `counter` (a READ_COUNTERS name) says why."""

    def __init__(self, counter):
        super().__init__(counter)
        self.counter = counter


def zeros():
    return np.zeros(len(READ_COUNTERS), np.int32)


def one(name):
    """A counter vector counting one event."""
    counts = zeros()
    counts[READ_INDEX[name]] = 1
    return counts


def as_dict(read_totals, build_totals):
    """{name: count} of both kinds, in a stable order."""
    out = {name: int(v) for name, v in zip(READ_COUNTERS, read_totals)}
    out.update({name: int(build_totals.get(name, 0)) for name in BUILD_COUNTERS})
    return out


class BuildSkips:
    """What a builder skipped in one split: `counts`, {counter name: count} of its
    builder's counters (`names`: SHARD_COUNTERS, or VIDEO_COUNTERS), and `shards`, a
    [path, reason] pair for each missing or unreadable shard (or the first
    MAX_NAMED_FILES skipped videos)."""

    def __init__(self, names=SHARD_COUNTERS):
        self.counts = dict.fromkeys(names, 0)
        self.shards = []

    def skip_shard(self, path, counter, reason):
        self.counts[counter] += 1
        self.shards.append([path, reason])

    def skip_file(self, path, counter, reason):
        self.counts[counter] += 1
        if len(self.shards) < MAX_NAMED_FILES:
            self.shards.append([path, reason])


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    """What a data set's build skipped, by split (from its tfds metadata); str() is the
    one message that ends a build."""
    dataset: str
    folder: str
    num_examples: dict  # {split: records written}
    build_counters: dict  # {split: {BUILD_COUNTERS name: count}}
    skipped_shards: dict  # {split: [[path, reason], ...]}

    @property
    def skipped(self):
        return any(any(c.values()) for c in self.build_counters.values())

    def __str__(self):
        written = ", ".join(f"{split} {n}" for split, n in sorted(self.num_examples.items()))
        head = f"Data set {self.dataset} in {self.folder} (records written: {written})"
        if not self.skipped:
            return f"{head}: its build skipped nothing."
        lines = [f"{head}: its build skipped these inputs."]
        for split in sorted(self.build_counters):
            counts = {k: v for k, v in self.build_counters[split].items() if v}
            if not counts:
                continue
            lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            shards = self.skipped_shards.get(split, [])
            lines += [f"    {path}: {reason}" for path, reason in shards]
        return "\n".join(lines)
