"""Video clips with captions from local files, in WebVid's layout, into tfds.

The manual directory holds the videos and a CSV (`csv`, a file name in it) with a header
row and one row a video: `videoid`, `name` (the caption) and `page_dir`, the file being
`<manual_dir>/<page_dir>/<videoid>.mp4` (how WebVid's download scripts lay it out); or,
instead of page_dir, `path`: the file's path relative to the manual directory, in any
container FFmpeg reads. Other columns are ignored.

Each video is decoded with PyAV (FFmpeg) at build time: frames 0, s, 2s, ... (s =
frame_stride) of its first video stream until num_frames are taken, each resized so its
shorter side is image_size and cropped square in the centre (one bicubic, antialiased
Pillow resize, as the pipeline does for images), RGB. A record holds those frames, the
caption (bytes, as in the CSV) and the source's width, height and frame rate
(records.video_features). Frames are JPEG at quality 95 without chroma subsampling: the
source is lossy already, and such a frame is half its PNG's size at 64 pixels and a third
at 256 (about 2 levels of mean error, less than the video codec's own).

Skipped and counted (counters.VIDEO_COUNTERS, stored in the data set's metadata, the first
counters.MAX_NAMED_FILES of a split named with the reason): a row whose file is missing,
a file that isn't a readable video, a video with fewer than num_frames * frame_stride
frames, a video whose shorter side is below image_size. No video stops a build.

Decoding uses every core (`num_processes`, spawned workers: call it under
`if __name__ == "__main__":`); records are written in the CSV's order.
"""
import csv
import dataclasses
import functools
import io
import os
import re

import tensorflow_datasets as tfds
from PIL import Image

from mdm_jax.data import counters, images, records
from mdm_jax.data.worker_builder import WorkerBuilder

VIDEO_ID, CAPTION, PAGE_DIR, PATH = "videoid", "name", "page_dir", "path"
JPEG_QUALITY = 95
# Characters a tfds config name may hold; the CSV's name is reduced to them.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
    csv: str = "results.csv"
    image_size: int = 256
    num_frames: int = 16
    frame_stride: int = 4


def builder_config(name="default", csv="results.csv", image_size=256, num_frames=16,
                   frame_stride=4):
    """The tfds config: its name encodes every parameter, so variants sit side by side."""
    if not 8 <= image_size <= 4096:
        raise ValueError(f"video image_size must be in [8, 4096]; got {image_size}.")
    if num_frames < 1:
        raise ValueError(f"video num_frames must be >= 1; got {num_frames}.")
    if frame_stride < 1:
        raise ValueError(f"video frame_stride must be >= 1; got {frame_stride}.")
    if not csv:
        raise ValueError("video csv must name the CSV of videos in data.manual_dir "
                         "(data.video.csv, e.g. results.csv).")
    stem = _NAME_UNSAFE.sub("_", os.path.splitext(csv)[0]).strip("_")
    return VideoConfig(
        name=f"{_NAME_UNSAFE.sub('_', name)}_{stem}_{image_size}px_{num_frames}f_"
             f"stride{frame_stride}",
        csv=csv, image_size=image_size, num_frames=num_frames, frame_stride=frame_stride,
        description=f"clips of {num_frames} frames, one every {frame_stride} of the "
                    f"source's, at {image_size}x{image_size}, of the videos listed in {csv}")


class VideoSkip(Exception):
    """A video the build skips: `counter` (a counters.VIDEO_COUNTERS name) and why."""

    def __init__(self, counter, reason):
        super().__init__(counter, reason)
        self.counter, self.reason = counter, reason


def read_rows(csv_path):
    """Iterator of (path of the video relative to the manual directory, or '' for a row
    naming none; caption bytes), in the CSV's order, read as it goes (WebVid's CSV has 10
    million rows). Raises ValueError naming the columns at once if the header lacks some.

    A row names its file by `path`, else by `page_dir` and `videoid`. The text is read
    with surrogate escapes, so a caption that isn't UTF-8 keeps its bytes (the pipeline
    converts and counts it, as for image_text).
    """
    f = open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(f)
    columns = set(reader.fieldnames or ())
    if CAPTION not in columns or not (PATH in columns or {VIDEO_ID, PAGE_DIR} <= columns):
        f.close()
        raise ValueError(
            f"{csv_path} has columns {sorted(columns)}: a video CSV needs a header row "
            f"with `{CAPTION}` (the caption) and either `{PATH}` (the file, relative to "
            f"data.manual_dir) or `{VIDEO_ID}` and `{PAGE_DIR}` (WebVid's "
            f"<page_dir>/<videoid>.mp4).")
    return _rows(f, reader)


def _rows(f, reader):
    with f:
        for row in reader:
            caption = (row.get(CAPTION) or "").encode("utf-8", "surrogateescape")
            yield _relative_path(row), caption


def _relative_path(row):
    if row.get(PATH):
        return row[PATH]
    if row.get(VIDEO_ID) and row.get(PAGE_DIR):
        return os.path.join(row[PAGE_DIR], f"{row[VIDEO_ID]}.mp4")
    return ""  # a short row: no file to find


def encode_jpeg(pixels):
    """A frame as the records store it (JPEG_QUALITY, no chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _sampled_frames(container, stream, image_size, num_frames, frame_stride):
    """(frames 0, s, 2s, ... until num_frames, each uint8 [image_size, image_size, 3];
    frames decoded; (width, height) or None if none decoded). Raises VideoSkip for a video
    below image_size."""
    taken, size, decoded = [], None, 0
    for decoded, frame in enumerate(container.decode(stream), start=1):
        if size is None:
            size = frame.width, frame.height
            if min(size) < image_size:
                raise VideoSkip("skipped_small_video",
                                f"{size[0]}x{size[1]}: shorter side below {image_size}")
        if (decoded - 1) % frame_stride == 0:
            taken.append(images.square(frame.to_image(), image_size))
        if decoded == num_frames * frame_stride:
            break
    return taken, decoded, size


def decode_clip(path, image_size, num_frames, frame_stride, threads=0):
    """(frames: uint8 [image_size, image_size, 3] each, width, height, fps) of the video at
    path; raises VideoSkip saying why it can't give them. threads: FFmpeg's decoding
    threads (0: as many as cores)."""
    # PyAV (FFmpeg, ~130 MB of libraries) is imported where videos are read, so image
    # runs and machines without it never load it.
    import av

    if not os.path.isfile(path):
        raise VideoSkip("skipped_missing_video", "missing")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoSkip("skipped_unreadable_video", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "AUTO", threads
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames, decoded, size = _sampled_frames(container, stream, image_size,
                                                    num_frames, frame_stride)
    except VideoSkip:
        raise
    except Exception as error:  # noqa: BLE001 - FFmpeg and PyAV raise many kinds on bad files
        # FFmpeg's errors carry the path in their text; the summary names it already.
        message = getattr(error, "strerror", None) or str(error).split("\n")[0]
        raise VideoSkip("skipped_unreadable_video",
                        f"unreadable ({type(error).__name__}: {message})") from error
    if not decoded:
        raise VideoSkip("skipped_unreadable_video", "no frame decodes")
    needed = num_frames * frame_stride
    if decoded < needed:
        raise VideoSkip("skipped_short_video", f"{decoded} frames, fewer than {needed} "
                        f"({num_frames} frames every {frame_stride})")
    return frames, size[0], size[1], fps


def clip_record(row, *, manual_dir, image_size, num_frames, frame_stride, threads):
    """(the video's path, record or None, None or VideoSkip) of one CSV row: a builder
    worker's job."""
    relative, caption = row
    path = os.path.join(manual_dir, relative)
    try:
        frames, width, height, fps = decode_clip(path, image_size, num_frames, frame_stride,
                                                 threads)
    except VideoSkip as skip:
        return path, None, skip
    return path, records.video_record([encode_jpeg(f) for f in frames], width, height, fps,
                                      caption=caption), None


class MdmVideo(WorkerBuilder):
    """Captioned clips decoded from local video files listed in a CSV."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []  # every config is made from its parameters (builder_config)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the videos and a CSV of them (videoid, name, page_dir as WebVid's; or name and "
        "path) in the manual directory (data.manual_dir); data.video.csv names the CSV.")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=records.video_features(self.builder_config.num_frames, caption=True),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        csv_path = os.path.join(manual_dir, self.builder_config.csv)
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(
                f"No video CSV {csv_path}: put the CSV of videos there, or set "
                "data.manual_dir / data.video.csv to where it is.")
        rows = read_rows(csv_path)
        skips = counters.BuildSkips(counters.VIDEO_COUNTERS)
        # Filled in while the generator runs; tfds writes the metadata once it is done.
        self.info.metadata["build_counters"] = {"train": skips.counts}
        self.info.metadata["skipped_shards"] = {"train": skips.shards}
        return {"train": self._generate_examples(manual_dir, rows, skips)}

    def _generate_examples(self, manual_dir, rows, skips):
        cfg = self.builder_config
        # The cores are shared out: processes decode videos side by side, each with its
        # share of FFmpeg threads (more would only contend).
        threads = max(1, (os.cpu_count() or 1) // self._num_processes)
        make = functools.partial(clip_record, manual_dir=manual_dir, image_size=cfg.image_size,
                                 num_frames=cfg.num_frames, frame_stride=cfg.frame_stride,
                                 threads=threads)
        # Keys are row numbers: unique even when the CSV lists a video twice.
        for number, (path, record, skip) in enumerate(self._map(make, rows, chunksize=4)):
            if skip is None:
                yield str(number), record
            else:
                skips.skip_file(path, skip.counter, skip.reason)


def make_builder(data_dir, name="default", csv="results.csv", image_size=256, num_frames=16,
                 frame_stride=4, num_processes=None):
    return MdmVideo(data_dir=os.path.expanduser(data_dir),
                    config=builder_config(name, csv, image_size, num_frames, frame_stride),
                    file_format="array_record", num_processes=num_processes)


def build(data_dir, manual_dir, name="default", csv="results.csv", image_size=256,
          num_frames=16, frame_stride=4, num_processes=None):
    """Decodes the videos the CSV in manual_dir lists (if not already done); returns the
    data set's folder. num_processes defaults to every core."""
    builder = make_builder(data_dir, name, csv, image_size, num_frames, frame_stride,
                           num_processes)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir)))
    return builder.data_dir
