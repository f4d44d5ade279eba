"""The shapes data set: reproducible bytes, captions that name what is drawn, labels, fine
detail at high resolution, and the tokenizer it ships."""
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import records, shapes, shapes_render
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.worker_builder import validation_size

PHRASE = re.compile(
    r"a (small|medium|large) (" + "|".join(shapes_render.COLOURS) + r") ("
    + "|".join(shapes_render.SHAPES) + r") ("
    + "|".join(shapes_render.POSITIONS.values()) + r")")
CELL = {phrase: cell for cell, phrase in shapes_render.POSITIONS.items()}


def data_files(folder):
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder)) if ".array_record-" in name}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 128x128 set of 30 scenes, made by one process."""
    root = tmp_path_factory.mktemp("shapes")
    folder = shapes.build(str(root), image_size=128, num_examples=30, seed=3, num_processes=1)
    return root, folder


def test_same_seed_same_bytes_whatever_the_number_of_processes(built, tmp_path):
    _, folder = built
    again = shapes.build(str(tmp_path / "a"), image_size=128, num_examples=30, seed=3,
                         num_processes=2)
    first, second = data_files(folder), data_files(again)
    assert len(first) == 2 and first == second  # train and validation, byte for byte
    other = shapes.build(str(tmp_path / "b"), image_size=128, num_examples=30, seed=4,
                         num_processes=1)
    assert data_files(other) != first


def test_captions_name_the_objects_drawn(built):
    root, _ = built
    source = shapes.make_builder(str(root), 128, 30, 3).as_data_source(split="train")
    assert len(source) == 30
    checked = 0
    for record in (source[i] for i in range(10)):
        caption = record[records.CAPTION].decode()
        objects = PHRASE.findall(caption)
        assert 1 <= len(objects) <= 3, caption
        pixels = np.asarray(Image.open(io.BytesIO(record[records.IMAGE])), np.int32)
        assert pixels.shape == (128, 128, 3)
        for _, colour, _, position in objects:
            row, column = CELL[position]
            rows, columns = (slice(i * 128 // 3, (i + 1) * 128 // 3) for i in (row, column))
            cell = pixels[rows, columns]
            close = np.abs(cell - shapes_render.COLOURS[colour]).max(axis=-1) <= 2
            # A small triangle (radius 0.07 of 128 pixels) fills some 100 pixels of its cell.
            assert close.sum() >= 12, (caption, colour, position, close.sum())
            checked += 1
        size, colour, shape, _ = objects[0]  # the first named is the largest: the label
        assert shapes_render.CLASS_NAMES[record[records.LABEL]] == f"{colour} {shape}"
        assert {o[0] for o in objects[1:]} <= {"small", "medium", "large"}
    assert checked >= 15


def test_a_colour_not_named_is_not_drawn(built):
    root, _ = built
    source = shapes.make_builder(str(root), 128, 30, 3).as_data_source(split="train")
    for record in (source[i] for i in range(10)):
        named = {o[1] for o in PHRASE.findall(record[records.CAPTION].decode())}
        pixels = np.asarray(Image.open(io.BytesIO(record[records.IMAGE])), np.int32)
        for colour, rgb in shapes_render.COLOURS.items():
            if colour not in named:
                assert (np.abs(pixels - rgb).max(axis=-1) <= 2).sum() < 12, colour


def test_fine_detail_lives_at_high_resolution():
    """Texture and outlines vanish when a 512x512 scene is average-pooled to 128x128: the
    detail a 512 level has to add is large, compared with what a 128 level sees."""
    for index in range(4):
        scene = shapes_render.sample_scene(0, index)
        image = shapes_render.render(scene, 512).astype(np.float32)
        pooled = image.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
        detail = np.abs(image - np.repeat(np.repeat(pooled, 4, 0), 4, 1)).mean()
        if scene.texture != "plain":
            assert detail > 2.0, (scene.texture, detail)
        assert detail > 0.05  # the outlines, at least


def test_validation_split_holds_other_scenes(built):
    root, _ = built
    builder = shapes.make_builder(str(root), 128, 30, 3)
    train = {builder.as_data_source("train")[i][records.IMAGE] for i in range(30)}
    validation = builder.as_data_source("validation")
    assert len(validation) == validation_size(30)
    assert validation[0][records.IMAGE] not in train


def test_ships_a_tokenizer_trained_on_its_captions(built):
    root, folder = built
    tok = tokenizer_lib.Tokenizer(os.path.join(folder, shapes.TOKENIZER_FILE))
    caption = shapes.make_builder(str(root), 128, 30, 3).as_data_source("train")[0][
        records.CAPTION].decode()
    ids = tok.encode(caption)
    assert ids[-1] == tok.eos_id and tokenizer_lib.load(tok.path)._sp.unk_id() not in ids
    # Whole words: no more pieces than words and commas.
    assert len(ids) - 1 <= len(caption.replace(",", " ,").split())


def test_rejects_sizes_it_cannot_make():
    with pytest.raises(ValueError, match="image_size"):
        shapes.builder_config(image_size=2048)


def test_easier_variants_simplify_the_same_scenes():
    """plain_background, centred and upright change only what they name, so a variant's
    scene i is the default scene i simplified (same shape, colour, size, background)."""
    for index in range(40):
        base = shapes_render.sample_scene(5, index, max_objects=1, min_size="large")
        easy = shapes_render.sample_scene(5, index, max_objects=1, min_size="large",
                                          plain_background=True, centred=True, upright=True)
        (b,), (e,) = base.shapes, easy.shapes
        assert (e.shape, e.colour, e.size, e.radius) == (b.shape, b.colour, b.size, b.radius)
        assert easy.background == base.background and easy.label == base.label
        assert easy.texture == "plain" and e.angle == 0.0 and e.cell == (1, 1)
        assert abs(e.centre[0] - 0.5) <= shapes_render.CELL_JITTER
        assert "in the centre" in easy.caption
    pixels = shapes_render.render(easy, 64).astype(int)
    # A plain background is one tone: the corners (never covered by a centred shape) agree.
    corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.all(corners == corners[0])


def test_variants_get_their_own_name_and_the_defaults_keep_theirs():
    assert shapes.builder_config(64, 100, 0).name == "64px_100_seed0"
    easy = shapes.builder_config(64, 100, 0, max_objects=1, min_size="large",
                                 plain_background=True, centred=True, upright=True)
    assert easy.name == "64px_100_seed0_max1_largeup_plain_centred_upright"
    assert easy.variant == dict(max_objects=1, min_size="large", plain_background=True,
                                centred=True, upright=True)


def test_centred_needs_one_shape_a_scene():
    with pytest.raises(ValueError, match="max_objects=1"):
        shapes.builder_config(64, 100, 0, centred=True)
    with pytest.raises(ValueError, match="plain_background must be true or false"):
        shapes.builder_config(64, 100, 0, plain_background="yes")
