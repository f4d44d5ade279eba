"""Writes real sources as the download tools lay them out: image-text pairs (webdataset tar
shards and TSV files of encoded images) and videos (files encoded with PyAV, and the CSV
that lists them). The tests and the benchmark build data sets from them; they also let
one try the image_text and video builders without downloading anything.
"""
import csv
import io
import json
import os
import tarfile

import av
import numpy as np
from PIL import Image


def encode(pixels_or_image, format, **options):
    """Encoded bytes of a numpy array or PIL image (format: JPEG, PNG, WEBP, TIFF...)."""
    image = pixels_or_image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo(rng, height, width, noise=8):
    """uint8 [height, width, 3] with a photo's mix of smooth regions, edges and noise (its
    standard deviation in levels), so that its JPEG is about as large and as slow to
    decode as a photo's."""
    coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC), np.float32)
    y, x = np.mgrid[0:height, 0:width]
    edges = 40.0 * (np.sin(x / rng.uniform(3, 9)) * np.cos(y / rng.uniform(3, 9)) > 0.3)
    if noise:
        smooth = smooth + rng.normal(0, noise, (height, width, 3))
    return np.clip(smooth + edges[..., None], 0, 255).astype(np.uint8)


def write_tar(path, samples):
    """A webdataset shard. samples: (key, {extension: bytes, str or dict}) pairs; str is
    UTF-8 encoded, dict becomes JSON. Members are written in the given order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, value in members.items():
                if isinstance(value, dict):
                    value = json.dumps(value).encode()
                elif isinstance(value, str):
                    value = value.encode()
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return path


def write_tsv(path, rows, header=True):
    """A TSV of (image path, caption) rows; a bytes caption is written as is."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        if header:
            f.write(b"image\tcaption\n")
        for image_path, caption in rows:
            caption = caption if isinstance(caption, bytes) else caption.encode()
            f.write(os.fsencode(image_path) + b"\t" + caption + b"\n")
    return path


def write_photo_shards(directory, num_shards, per_shard, seed=0, sizes=((640, 480),)):
    """Tar shards of JPEG photos (`photo`) with captions and img2dataset-style JSON;
    sizes are (width, height) choices. Returns the shard paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(num_shards):
        samples = []
        for i in range(per_shard):
            width, height = sizes[int(rng.integers(len(sizes)))]
            key = f"{shard:05d}{i:04d}"
            samples.append((key, {
                "jpg": encode(photo(rng, height, width), "JPEG", quality=90),
                "txt": f"photo {key} of a scene",
                "json": {"key": key, "width": width, "height": height,
                         "original_width": width, "original_height": height},
            }))
        paths.append(write_tar(os.path.join(directory, f"{shard:05d}.tar"), samples))
    return paths


def panning_frames(rng, num_frames, height, width, step=2):
    """uint8 [num_frames, height, width, 3]: a camera pan, the view moving `step` pixels
    right each frame across a smooth picture with edges. Without `photo`'s noise, so that
    codecs keep it close and a frame is told apart from its neighbours by the motion."""
    picture = photo(rng, height, width + step * num_frames, noise=0)
    return np.stack([picture[:, t * step:t * step + width] for t in range(num_frames)])


def write_video(path, frames, fps=24, codec="libx264", pixel_format="yuv420p", **options):
    """A real video file of frames (uint8 [T, H, W, 3]; H and W even for 4:2:0 pixel
    formats) encoded with PyAV; the container is path's extension's (.mp4, .webm, .avi,
    .mkv...). options go to the encoder, e.g. crf="18" for libx264. Returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pixel_format
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())  # flushes the frames the encoder holds back
    return path


def write_video_csv(path, rows):
    """A CSV listing videos as the video builder reads it: rows are dicts of column ->
    value, their keys the header (WebVid's results CSV: videoid, contentUrl, duration,
    page_dir, name; or name and path). Quoted as needed: captions have commas."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
