"""What one clip costs to build, on one core: decoding a WebVid-sized (596x336) H.264 video
at 16 frames every 4, resizing, cropping and JPEG-encoding them (the video builder's
work), and drawing and PNG-encoding a moving shapes clip of 16 frames. One JSON line per
data set and size: milliseconds and stored kilobytes a clip.

    python -m benchmarks.bench_video_build [--sizes=64,256] [--clips=10]
"""
import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from mdm_jax.data import moving_shapes, video
from mdm_jax.testing import source_files

_SIZES = flags.DEFINE_list("sizes", ["64", "256"], "Clip sides to store.")
_CLIPS = flags.DEFINE_integer("clips", 10, "Clips timed per setting (after one warm-up).")
FRAMES, STRIDE = 16, 4


def timed(make, clips):
    """(ms a clip, KB a clip) of make(i) -> list of encoded frames, after one warm-up."""
    make(0)
    start = time.perf_counter()
    sizes = [sum(map(len, make(i))) for i in range(clips)]
    return (time.perf_counter() - start) / clips * 1e3, np.mean(sizes) / 1e3


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as folder:
        frames = source_files.panning_frames(np.random.default_rng(0), FRAMES * STRIDE, 336, 596)
        path = source_files.write_video(os.path.join(folder, "clip.mp4"), frames)
        for size in map(int, _SIZES.value):
            def decoded(_, size=size):
                clip = video.decode_clip(path, size, FRAMES, STRIDE, threads=1)[0]
                return [video.encode_jpeg(f) for f in clip]

            def drawn(i, size=size):
                return moving_shapes.make_example(0, i, size, FRAMES)[0]
            for name, make in (("video", decoded), ("moving_shapes", drawn)):
                ms, kb = timed(make, _CLIPS.value)
                print(json.dumps({"benchmark": "video_build", "dataset": name, "size": size,
                                  "frames": FRAMES, "ms_per_clip": round(ms, 1),
                                  "kb_per_clip": round(kb, 1)}), flush=True)


if __name__ == "__main__":
    app.run(main)
