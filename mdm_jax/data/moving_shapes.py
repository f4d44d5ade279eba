"""The generated default video data set: one shape moving across a background, no download.

Each clip is one anti-aliased shape of shapes_render (a shape, colour and size of the
shapes data set, at a fixed rotation) sliding in a straight line left, right, up or down
across a plain or textured background, by 30% to 60% of the image side over the clip,
never leaving the frame. Captions say what moves and where to: "a red circle moving left",
"a blue star moving up on a striped sage background", "a large orange square moves down,
mint background". Clip i is a function of (seed, i) alone, so a data set holds the same
records whatever the number of processes generating it (tested through the build command;
the array_record files themselves differ in their compressed bytes from one Python process
to the next, shapes' included).

`build(data_dir, image_size=64, num_frames=16, num_examples=..., seed=0)` writes the tfds
data set `mdm_moving_shapes/<image_size>px_<num_frames>f_<num_examples>_seed<seed>`
(array_record) with a train split (num_examples clips) and a validation split
(num_examples // 50 further clips), and a sentencepiece tokenizer trained on its captions
(`tokenizer.model` in the data set's folder). Frames are PNG: lossless, so the thin
outlines and textures survive exactly, and small, as the pictures are flat colours.

Labels are (shape, colour) of the moving shape, shapes_render.CLASS_NAMES: the classes of
the shapes data set, so a frame classifier of shapes (the shapes judge) reads each frame;
the direction is the caption's.
"""
import dataclasses
import functools
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mdm_jax.data import records, shapes_render
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.worker_builder import GeneratedBuilder

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_VOCAB = 512  # the captions use some 40 words; the limit is soft (tokenizer.train)
# Unit steps in image coordinates (x right, y down).
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# How far the shape travels over a clip, as a fraction of the image side: at least 30%,
# so motion shows even at 16 pixels; at most 60%, which the largest shape can still do
# inside the frame (its centre keeps 0.2 from each edge).
TRAVEL = (0.3, 0.6)
# The frame rate stored in each record: the clips have none of their own; 16 frames
# are meant as two seconds.
FPS = 8.0
CAPTION_TEMPLATES = (
    "a {colour} {shape} moving {direction}",
    "a {size} {colour} {shape} moving {direction}",
    "a {colour} {shape} moving {direction} on a {texture} {background} background",
    "a {size} {colour} {shape} moves {direction}, {background} background",
)
# "a" before a vowel (only "orange" starts with one) reads "an".
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


@dataclasses.dataclass(frozen=True)
class Clip:
    scene: shapes_render.Scene  # the first frame's scene; its caption is the clip's
    direction: str
    travel: float  # fraction of the image side the centre moves over the clip

    def frame_scene(self, t, num_frames):
        """The scene of frame t of num_frames: the shape moved t/(num_frames-1) of the way."""
        (shape,) = self.scene.shapes
        dx, dy = DIRECTIONS[self.direction]
        step = self.travel * t / (num_frames - 1)
        centre = (shape.centre[0] + dx * step, shape.centre[1] + dy * step)
        return dataclasses.replace(self.scene,
                                   shapes=(dataclasses.replace(shape, centre=centre),))


def _path(rng, radius, travel):
    """(start, end) of the moving coordinate, both inside the frame."""
    low, high = radius + 0.01, 1 - radius - 0.01
    start = float(rng.uniform(low, high - travel))
    return start, start + travel


def sample_clip(seed, index):
    """The clip of example `index` of the data set made with `seed`."""
    rng = np.random.default_rng([seed, index])
    shape, colour = str(rng.choice(shapes_render.SHAPES)), str(rng.choice(
        list(shapes_render.COLOURS)))
    size = str(rng.choice(list(shapes_render.SIZES)))
    radius = float(rng.uniform(*shapes_render.SIZES[size]))
    direction = str(rng.choice(list(DIRECTIONS)))
    travel = float(rng.uniform(*TRAVEL))
    start, end = _path(rng, radius, travel)
    across = float(rng.uniform(radius + 0.01, 1 - radius - 0.01))
    dx, dy = DIRECTIONS[direction]
    # Moving towards smaller coordinates starts at the far end.
    along = start if dx + dy > 0 else end
    centre = (along, across) if dx else (across, along)
    row, column = (min(int(c * 3), 2) for c in (centre[1], centre[0]))
    moving = shapes_render.Shape(shape=shape, colour=colour, size=size, radius=radius,
                                 centre=centre, cell=(row, column),
                                 angle=float(rng.uniform(0, 2 * np.pi)))
    background = str(rng.choice(list(shapes_render.BACKGROUNDS)))
    texture = str(rng.choice(list(shapes_render.TEXTURES)))
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    caption = _ARTICLE.sub("an ", template.format(
        colour=colour, shape=shape, size=size, direction=direction,
        texture=shapes_render.TEXTURES[texture], background=background))
    scene = shapes_render.Scene(shapes=(moving,), background=background, texture=texture,
                                texture_period=float(rng.uniform(3.0, 8.0)),
                                texture_angle=float(rng.uniform(0, np.pi)), caption=caption)
    return Clip(scene=scene, direction=direction, travel=travel)


def render(clip, size, num_frames):
    """The clip as uint8 [num_frames, size, size, 3]."""
    return np.stack([shapes_render.render(clip.frame_scene(t, num_frames), size)
                     for t in range(num_frames)])


def make_example(seed, index, size, num_frames):
    """(PNG bytes of each frame, caption, label) of example `index`: what the builder
    stores."""
    clip = sample_clip(seed, index)
    frames = [shapes_render.encode_png(f) for f in render(clip, size, num_frames)]
    return frames, clip.scene.caption, clip.scene.label


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_frames: int = 16
    num_examples: int = 10_000
    seed: int = 0


def builder_config(image_size=64, num_frames=16, num_examples=10_000, seed=0):
    if not 16 <= image_size <= 1024:
        raise ValueError(f"moving_shapes image_size must be in [16, 1024]; got {image_size}.")
    if not 2 <= num_frames <= 1024:
        raise ValueError(f"moving_shapes num_frames must be in [2, 1024] (a clip shows "
                         f"motion); got {num_frames}.")
    if num_examples < 1:
        raise ValueError(f"moving_shapes num_examples must be positive; got {num_examples}.")
    return MovingShapesConfig(
        name=f"{image_size}px_{num_frames}f_{num_examples}_seed{seed}", image_size=image_size,
        num_frames=num_frames, num_examples=num_examples, seed=seed,
        description=f"{num_examples} clips of {num_frames} frames at "
                    f"{image_size}x{image_size}, seed {seed}")


IN_PROCESS_BELOW = 512  # clips


class MdmMovingShapes(GeneratedBuilder):
    """Clips of one shape moving in one direction, with captions and (shape, colour) labels."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []  # every config is made from its parameters (builder_config)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=records.video_features(self.builder_config.num_frames, caption=True,
                                            class_names=shapes_render.CLASS_NAMES))

    def _generate_examples(self, indices):
        cfg = self.builder_config
        make = functools.partial(_make_record, seed=cfg.seed, size=cfg.image_size,
                                 num_frames=cfg.num_frames)
        yield from self._map(make, indices, chunksize=4,
                             in_process=len(indices) < IN_PROCESS_BELOW)


def _make_record(index, *, seed, size, num_frames):
    frames, caption, label = make_example(seed, index, size, num_frames)
    return index, records.video_record(frames, size, size, FPS, caption=caption, label=label)


def make_builder(data_dir, image_size=64, num_frames=16, num_examples=10_000, seed=0,
                 num_processes=None):
    return MdmMovingShapes(data_dir=os.path.expanduser(data_dir),
                           config=builder_config(image_size, num_frames, num_examples, seed),
                           file_format="array_record", num_processes=num_processes)


def build(data_dir, image_size=64, num_frames=16, num_examples=10_000, seed=0,
          num_processes=None):
    """Generates the data set (if not already there) and its tokenizer; returns its folder.

    num_processes defaults to every core.
    """
    builder = make_builder(data_dir, image_size, num_frames, num_examples, seed, num_processes)
    builder.download_and_prepare()
    tokenizer_path = os.path.join(builder.data_dir, TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
        captions = (sample_clip(seed, i).scene.caption for i in range(num_examples))
        tokenizer_lib.train(captions, tokenizer_path, vocab_size=TOKENIZER_VOCAB)
    return builder.data_dir
