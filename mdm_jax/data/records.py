"""The record every builder writes: encoded image bytes as found (never re-encoded), the
original size, and a caption and/or a class label. A video data set's record holds a clip
instead (`video_features`, `video_record`): its frames, each an encoded image (decoded from
the video, cropped and encoded by the builder: a video's own stream can't be cut into
frames that decode alone), and the source's size and frame rate.

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
FRAMES, FPS = "frames", "fps"


def features(caption, class_names=None):
    """tfds features of a record with a caption (bool) and/or labels from class_names."""
    return _with_text_and_label_features({
        IMAGE: tfds.features.Tensor(shape=(), dtype=np.object_),
        # Size of the original image in pixels (0 when a builder could not read it); the
        # pipeline's `scale` micro-conditioning value derives from it.
        WIDTH: tfds.features.Tensor(shape=(), dtype=np.int32),
        HEIGHT: tfds.features.Tensor(shape=(), dtype=np.int32),
    }, caption, class_names)


def video_features(num_frames, caption, class_names=None):
    """tfds features of a clip of num_frames frames, with a caption and/or labels.

    FRAMES is a [num_frames] tensor of encoded images (one bytes string a frame), already
    cropped square at the data set's size. Encoded, as a frame is several times smaller so
    (each builder says which format and why); a sequence of bytes because tfds's TF-free
    serializer stores one, and each frame decodes alone, so a pipeline that reads the
    first few frames decodes only those.
    """
    return _with_text_and_label_features({
        FRAMES: tfds.features.Tensor(shape=(num_frames,), dtype=np.object_),
        # The source video's size in pixels (`scale` derives from it, as for images) and
        # its frame rate (0 when unknown).
        WIDTH: tfds.features.Tensor(shape=(), dtype=np.int32),
        HEIGHT: tfds.features.Tensor(shape=(), dtype=np.int32),
        FPS: tfds.features.Tensor(shape=(), dtype=np.float32),
    }, caption, class_names)


def _with_text_and_label_features(spec, caption, class_names):
    if caption:
        spec[CAPTION] = tfds.features.Tensor(shape=(), dtype=np.object_)
    if class_names is not None:
        spec[LABEL] = tfds.features.ClassLabel(names=list(class_names))
    return tfds.features.FeaturesDict(spec)


def video_record(frames, width, height, fps, caption=None, label=None):
    """frames: encoded images (bytes), one a frame."""
    return _with_caption_and_label({FRAMES: list(frames), WIDTH: np.int32(width),
                                    HEIGHT: np.int32(height), FPS: np.float32(fps)},
                                   caption, label)


def record(image, width, height, caption=None, label=None):
    return _with_caption_and_label(
        {IMAGE: image, WIDTH: np.int32(width), HEIGHT: np.int32(height)}, caption, label)


def _with_caption_and_label(out, caption, label):
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
