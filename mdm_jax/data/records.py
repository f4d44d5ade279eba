"""The record every builder writes: encoded image bytes as found (never re-encoded), the
original size, and a caption and/or a class label.

Images stay encoded so that builds are fast and lossless and every decoding problem
(corrupt bytes, CMYK, 16-bit...) is met, converted and counted by the reading pipeline,
in whichever process decodes. Captions stay bytes for the same reason: a caption that is
not valid UTF-8 is the pipeline's to convert and count.
"""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IMAGE, WIDTH, HEIGHT, CAPTION, LABEL = "image", "width", "height", "caption", "label"


def features(caption, class_names=None):
    """tfds features of a record with a caption (bool) and/or labels from class_names."""
    spec = {
        IMAGE: tfds.features.Tensor(shape=(), dtype=np.object_),
        # Size of the original image in pixels (0 when a builder could not read it); the
        # pipeline's `scale` micro-conditioning value derives from it.
        WIDTH: tfds.features.Tensor(shape=(), dtype=np.int32),
        HEIGHT: tfds.features.Tensor(shape=(), dtype=np.int32),
    }
    if caption:
        spec[CAPTION] = tfds.features.Tensor(shape=(), dtype=np.object_)
    if class_names is not None:
        spec[LABEL] = tfds.features.ClassLabel(names=list(class_names))
    return tfds.features.FeaturesDict(spec)


def record(image, width, height, caption=None, label=None):
    out = {IMAGE: image, WIDTH: np.int32(width), HEIGHT: np.int32(height)}
    if caption is not None:
        out[CAPTION] = caption if isinstance(caption, bytes) else caption.encode("utf-8")
    if label is not None:
        out[LABEL] = int(label)
    return out


def image_size_of(data):
    """(width, height) from an encoded image's header, or (0, 0) if it can't be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any unreadable header: the pipeline counts it later
        return 0, 0
