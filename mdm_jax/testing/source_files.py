"""Writes real image-text sources — webdataset tar shards and TSV files of encoded images —
as the download tools lay them out. The tests and the benchmark build data sets from
them; they also let one try the image_text builder without downloading anything.
"""
import io
import json
import os
import tarfile

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


def photo(rng, height, width):
    """uint8 [height, width, 3] with a photo's mix of smooth regions, edges and noise, so
    that its JPEG is about as large and as slow to decode as a photo's."""
    coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC), np.float32)
    y, x = np.mgrid[0:height, 0:width]
    edges = 40.0 * (np.sin(x / rng.uniform(3, 9)) * np.cos(y / rng.uniform(3, 9)) > 0.3)
    noise = rng.normal(0, 8, (height, width, 3))
    return np.clip(smooth + edges[..., None] + noise, 0, 255).astype(np.uint8)


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
