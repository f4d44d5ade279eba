"""Sampled levels as pictures: uint8, the grid of every level (strips of frames for
video), and PNG files.

Lower levels are scaled up (nearest) to the top size so a grid's rows line up. Files are
written by process 0, through etils.epath (a local folder or a URL).
"""
import io

import jax
import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images):
    """Images in [-1, 1] -> uint8 [0, 255]."""
    return np.round((np.clip(np.asarray(images, np.float32), -1, 1) + 1) * 127.5).astype(
        np.uint8)


def level_grid(levels):
    """Levels [L] of [N, h_i, w_i, C] in [-1, 1] -> uint8 grid, one row per sample (for
    video levels, each sample's clip_strips, one above the other)."""
    if levels[0].ndim == 5:
        return np.concatenate([clip_strips(levels, n) for n in range(levels[0].shape[0])])
    top = levels[0].shape[1]
    rows = []
    for n in range(levels[0].shape[0]):
        tiles = []
        for level in levels:
            img = np.asarray(level[n], np.float32)
            factor = top // img.shape[0]
            tiles.append(np.repeat(np.repeat(img, factor, axis=0), factor, axis=1))
        rows.append(np.concatenate(tiles, axis=1))
    return to_uint8(np.concatenate(rows, axis=0))


def clip_strips(levels, n):
    """Sample n of video levels [N, T_i, h_i, w_i, C] as one uint8 image: a row of frames
    per level, each frame scaled up to the top size; a level's fewer frames (a temporal
    level's inner) sit at the left of its row."""
    top_frames, top = levels[0].shape[1], levels[0].shape[2]
    rows = []
    for level in levels:
        clip = to_uint8(level[n])
        factor = top // clip.shape[1]
        frames = np.repeat(np.repeat(clip, factor, axis=1), factor, axis=2)
        row = np.zeros((top, top * top_frames, clip.shape[-1]), np.uint8)
        for t, frame in enumerate(frames):
            row[:, t * top:(t + 1) * top] = frame
        rows.append(row)
    return np.concatenate(rows, axis=0)


def write_png(path, image_uint8):
    """One PNG at an epath (its folder made)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(image_uint8.squeeze(-1) if image_uint8.shape[-1] == 1
                    else image_uint8).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def write_grid(path, levels):
    """The grid of every level at `path` (by process 0); returns the uint8 grid."""
    grid = level_grid(levels)
    if jax.process_index() == 0:
        write_png(path, grid)
    return grid


def write_images(output, levels):
    """One PNG per sample of the highest level, NNNNN.png, and grid.png of every level;
    returns the sample paths."""
    output = epath.Path(output)
    paths = [output / f"{i:05d}.png" for i in range(levels[0].shape[0])]
    if jax.process_index() == 0:
        for path, image in zip(paths, to_uint8(levels[0])):
            write_png(path, image)
    write_grid(output / "grid.png", levels)
    return [str(p) for p in paths]
