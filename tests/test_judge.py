"""The shapes judge (mdm_jax.evaluation.judge): the packaged checkpoint reads scenes it never
saw, at 64² and (resized inside) at 128²; labels and captions map to the attributes it
judges; Judge.load refuses what isn't a judge; train_judge trains and saves a loadable one.

Everything runs in this process on the CPU; the scenes are rendered here (~1 s for 400).
"""
import importlib.util
import os

import numpy as np
import pytest

from mdm_jax.data import shapes, shapes_render
from mdm_jax.evaluation import judge as judge_lib
from mdm_jax.evaluation import train_judge

# Neither train_judge.TRAIN_SEED nor HELD_OUT_SEED, nor a data set's default seed (0).
UNSEEN_SEED = 7
NUM_SCENES = 400
BATCH = 200  # one compiled batch shape per image size


def render(scenes, size):
    return np.stack([shapes_render.render(s, size) for s in scenes])


@pytest.fixture(scope="module")
def packaged():
    return judge_lib.Judge.load()


@pytest.fixture(scope="module")
def demo_scenes():
    """The demo's data set variant (configs/demo.py: one large upright shape in the centre
    of a plain background)."""
    spec = importlib.util.spec_from_file_location(
        "demo", os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    variant = shapes.variant(demo.get_config().data.shapes)
    assert variant["centred"] and variant["upright"] and variant["plain_background"]
    return [shapes_render.sample_scene(UNSEEN_SEED, i, **variant) for i in range(NUM_SCENES)]


def label_wanted(scenes):
    return [judge_lib.label_attributes(s.label) for s in scenes]


def test_unseen_seed_is_not_a_training_seed():
    assert UNSEEN_SEED not in (train_judge.TRAIN_SEED, train_judge.HELD_OUT_SEED, 0)


def test_packaged_judge_reads_every_attribute_of_unseen_scenes(packaged):
    scenes = [shapes_render.sample_scene(UNSEEN_SEED, i, max_objects=1)
              for i in range(NUM_SCENES)]
    predictions, features = packaged.predict(render(scenes, 64), batch_size=BATCH)
    assert set(predictions) == set(judge_lib.ATTRIBUTES)
    assert features.shape == (NUM_SCENES, judge_lib.FEATURES)
    assert np.all(np.isfinite(features))
    agreement = judge_lib.agreement(predictions, [judge_lib.scene_attributes(s)
                                                  for s in scenes])
    assert set(agreement) == {"all", *judge_lib.ATTRIBUTES}
    assert agreement["all"] >= 0.98, agreement
    for name in judge_lib.ATTRIBUTES:
        assert agreement[name] >= 0.98, agreement
    # The scenes vary: a judge answering one constant would not get here, but check that
    # the predictions themselves vary too.
    assert len(set(predictions["shape"])) == len(judge_lib.ATTRIBUTES["shape"])
    assert len(set(predictions["colour"])) == len(judge_lib.ATTRIBUTES["colour"])


def test_packaged_judge_reads_the_demo_variants_labels(packaged, demo_scenes):
    predictions, _ = packaged.predict(render(demo_scenes, 64), batch_size=BATCH)
    agreement = judge_lib.agreement(predictions, label_wanted(demo_scenes))
    assert set(agreement) == {"all", "shape", "colour"}  # only what a label names
    assert agreement["all"] >= 0.98, agreement
    # Float input in [-1, 1] is read as the same uint8 image.
    images = render(demo_scenes[:4], 64)
    np.testing.assert_allclose(judge_lib.to_judge_input(images),
                               judge_lib.to_judge_input(images.astype(np.float32) / 127.5 - 1),
                               atol=1e-6)


def test_128px_renders_are_resized_to_what_the_judge_reads(packaged, demo_scenes):
    scenes = demo_scenes[:BATCH]
    images = render(scenes, 128)
    assert judge_lib.to_judge_input(images[:2]).shape == (2, 64, 64, 3)
    wanted = label_wanted(scenes)
    predictions, features = packaged.predict(images, batch_size=BATCH)
    assert features.shape == (BATCH, judge_lib.FEATURES)
    accuracy = judge_lib.agreement(predictions, wanted)["all"]
    # Measured 0.99. Cruder resizing fails the bound: keeping every other pixel (or
    # nearest-neighbour resizing) reads 0.935-0.94, a 64² crop 0.20, noise 0.025.
    assert accuracy >= 0.97
    noise = np.random.default_rng(0).integers(0, 256, images.shape, np.uint8)
    noise_accuracy = judge_lib.agreement(packaged.predict(noise, batch_size=BATCH)[0],
                                         wanted)["all"]
    assert noise_accuracy < 0.5 < accuracy


def test_label_attributes_round_trip_with_class_index():
    for shape in shapes_render.SHAPES:
        for colour in shapes_render.COLOURS:
            attributes = judge_lib.label_attributes(shapes_render.class_index(shape, colour))
            assert attributes == {"shape": judge_lib.ATTRIBUTES["shape"].index(shape),
                                  "colour": judge_lib.ATTRIBUTES["colour"].index(colour)}
    # A scene's label names its main shape.
    for i in range(20):
        scene = shapes_render.sample_scene(UNSEEN_SEED, i)
        wanted = judge_lib.scene_attributes(scene)
        assert judge_lib.label_attributes(scene.label) == {
            "shape": wanted["shape"], "colour": wanted["colour"]}
    for bad in (-1, len(shapes_render.CLASS_NAMES)):
        with pytest.raises(ValueError, match="is not a shapes class"):
            judge_lib.label_attributes(bad)


def test_caption_attributes_parses_one_shape_captions():
    named = set()
    for i in range(300):
        scene = shapes_render.sample_scene(UNSEEN_SEED, i, max_objects=1)
        found = judge_lib.caption_attributes(scene.caption)
        wanted = judge_lib.scene_attributes(scene)
        # Every caption names the shape's size, colour, kind and position.
        assert {"shape", "colour", "size", "position"} <= set(found), scene.caption
        for name, index in found.items():
            assert index == wanted[name], (scene.caption, name)
        named |= set(found)
    # Some templates name the background and its texture too.
    assert named == set(judge_lib.ATTRIBUTES)
    found = judge_lib.caption_attributes(
        "a large blue star in the top left on a striped mint background")
    assert found == {"size": 2, "colour": 4, "shape": 3, "position": 0, "texture": 1,
                     "background": 5}


def test_caption_attributes_refuses_several_shapes():
    with pytest.raises(ValueError, match="several shapes"):
        judge_lib.caption_attributes("a small red circle on the left and a small red "
                                     "square on the right")
    with pytest.raises(ValueError, match="several colours"):
        judge_lib.caption_attributes("a small red and blue circle on the left")
    # Two shapes of one kind, size and colour: the word counts, not just its presence.
    with pytest.raises(ValueError, match="several shapes"):
        judge_lib.caption_attributes("a small pink circle in the centre and a small pink "
                                     "circle in the bottom left, slate background")
    # Every real multi-shape caption of the default data set.
    checked = 0
    for i in range(100):
        scene = shapes_render.sample_scene(0, i)
        if len(scene.shapes) > 1:
            with pytest.raises(ValueError, match="one-shape scenes"):
                judge_lib.caption_attributes(scene.caption)
            checked += 1
    assert checked >= 10


def test_load_refuses_what_is_not_a_judge(tmp_path, packaged):
    with pytest.raises(FileNotFoundError, match="mdm_jax.train_judge"):
        judge_lib.Judge.load(str(tmp_path / "missing.npz"))

    other = str(tmp_path / "other.npz")
    np.savez(other, foo=np.zeros(3))
    with pytest.raises(ValueError, match="is not a shapes judge checkpoint.*train_judge"):
        judge_lib.Judge.load(other)

    text = tmp_path / "text.npz"
    text.write_text("not an npz")
    with pytest.raises(ValueError, match="is not a shapes judge checkpoint"):
        judge_lib.Judge.load(str(text))

    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    shapes = jax.eval_shape(judge_lib.JudgeNet(widths=(16, 32, 64, 64)).init,
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    narrow = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    path = str(tmp_path / "narrow.npz")
    judge_lib.save(path, narrow)
    with pytest.raises(ValueError, match="another network's params than JudgeNet.*retrain"):
        judge_lib.Judge.load(path)

    right_shapes = packaged.params
    path = str(tmp_path / "vocabulary.npz")
    judge_lib.save(path, right_shapes,
                   attributes={**{k: list(v) for k, v in judge_lib.ATTRIBUTES.items()},
                               "shape": ["circle", "square"]})
    with pytest.raises(ValueError, match="judges other attributes.*retrain"):
        judge_lib.Judge.load(path)
    # The same params under this version's attributes load.
    judge_lib.save(path, right_shapes)
    assert judge_lib.Judge.load(path).meta["image_size"] == judge_lib.IMAGE_SIZE


@pytest.mark.slow
def test_train_judge_saves_a_judge_that_loads(tmp_path):
    params, accuracy = train_judge.train(num_train=256, num_held_out=64, steps=3,
                                         batch_size=32, processes=2)
    assert set(accuracy) == {"all", *judge_lib.ATTRIBUTES}
    assert all(0.0 <= v <= 1.0 for v in accuracy.values())
    # Three steps moved the params from their initialisation (biases start at zero).
    assert np.any(np.asarray(params["conv0_0"]["bias"]) != 0)
    assert np.any(np.asarray(params["head_shape"]["bias"]) != 0)

    path = str(tmp_path / "judge" / "tiny.npz")
    judge_lib.save(path, params, held_out_accuracy=accuracy, train_steps=3)
    loaded = judge_lib.Judge.load(path)
    assert loaded.meta["held_out_accuracy"] == accuracy
    assert loaded.meta["train_steps"] == 3
    np.testing.assert_array_equal(np.asarray(loaded.params["head_shape"]["kernel"]),
                                  np.asarray(params["head_shape"]["kernel"]))
    scenes = [shapes_render.sample_scene(UNSEEN_SEED, i, max_objects=1) for i in range(5)]
    predictions, features = loaded.predict(render(scenes, 64))
    assert features.shape == (5, judge_lib.FEATURES)
    for name, values in judge_lib.ATTRIBUTES.items():
        assert predictions[name].shape == (5,)
        assert np.all((predictions[name] >= 0) & (predictions[name] < len(values)))
