"""Sampled clips as files: an MP4 and a GIF per sample, and a strip of frames per level
(images.clip_strips). Levels are [N, T_i, h_i, w_i, C] in [-1, 1], highest first (a video
model's outputs). Written by process 0 through etils.epath (a local folder or a URL).
"""
import io
import os
import tempfile

import jax
import numpy as np
from etils import epath
from PIL import Image

from mdm_jax.sampling.images import clip_strips, to_uint8, write_png

FPS = 8


def encode_mp4(frames_uint8, fps=FPS):
    """H.264 MP4 bytes of [T, H, W, 3] uint8 frames (yuv420p: even sides are padded)."""
    # Imported here, as in data/video.py: only writing MP4s needs PyAV.
    import av

    t, h, w, _ = frames_uint8.shape
    padded = np.pad(frames_uint8, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # PyAV's muxer writes to a file name; a temporary file keeps the result byte-exact.
    with tempfile.TemporaryDirectory() as folder:
        name = os.path.join(folder, "clip.mp4")
        with av.open(name, mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = padded.shape[2], padded.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "12"}  # close to lossless: samples are small
            for frame in padded:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        with open(name, "rb") as f:
            return f.read()


def encode_gif(frames_uint8, fps=FPS):
    """Looping GIF bytes of [T, H, W, C] uint8 frames."""
    images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames_uint8]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def write_clips(output, levels):
    """Per sample i: i.mp4 and i.gif of the top level, i_levels.png (every level's frame
    strip); returns the MP4 paths."""
    output = epath.Path(output)
    paths = [output / f"{i:05d}.mp4" for i in range(levels[0].shape[0])]
    if jax.process_index() == 0:
        output.mkdir(parents=True, exist_ok=True)
        for i, (path, clip) in enumerate(zip(paths, to_uint8(levels[0]))):
            path.write_bytes(encode_mp4(clip))
            path.with_suffix(".gif").write_bytes(encode_gif(clip))
            write_png(output / f"{i:05d}_levels.png", clip_strips(levels, i))
    return [str(p) for p in paths]
