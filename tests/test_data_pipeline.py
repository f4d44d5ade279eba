"""The grain pipeline on a tiny shapes set: the batch contract with and without text,
tokenisation and dropout, precomputed embeddings, seeds and epochs, exact resume
(get_state/set_state and through Orbax), global arrays, config errors, the synthetic
source, and one smoke test with worker processes."""
import hashlib
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec

from mdm_jax.data import config as data_config
from mdm_jax.data import images, pipeline, shapes, text_embeddings
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.transforms import TextInputs

N = 48
TEXT = TextInputs(max_length=40)  # the shapes data set's own tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    shapes.build(str(root), image_size=32, num_examples=N, seed=0, num_processes=1)
    config = data_config.get_data_config()
    config.update(dict(data_dir=str(root), image_size=32))
    config.shapes.update(dict(image_size=32, num_examples=N))
    return config


def cfg(base, **overrides):
    config = base.copy_and_resolve_references()
    config.update(overrides)
    return config


def iterate(config, batch=4, **kwargs):
    kwargs = {"text": TEXT, "process_index": 0, "process_count": 1, **kwargs}
    return pipeline.make_iterator(config, global_batch_size=batch, **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def fingerprints(batches):
    return [hashlib.sha1(image.tobytes()).hexdigest() for b in batches for image in b["images"]]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if key == "counters":
                assert x[key] == y[key]
            else:
                np.testing.assert_array_equal(x[key], y[key])


def test_batch_contract(base):
    batch = next(iterate(cfg(base, caption_dropout=0.0, label_dropout=0.0)))
    assert set(batch) == {"images", "scale", "tokens", "token_mask", "labels", "counters"}
    assert batch["images"].dtype == np.float32 and batch["images"].shape == (4, 32, 32, 3)
    assert -1 <= batch["images"].min() and batch["images"].max() <= 1
    assert batch["images"].max() - batch["images"].min() > 1  # real pictures, not constants
    assert batch["scale"].dtype == np.float32 and (batch["scale"] == 32).all()
    for key in ("tokens", "token_mask"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (4, 40)
    assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (4,)
    assert ((batch["labels"] >= 0) & (batch["labels"] < 50)).all()
    # Masks cover the caption and its EOS, then padding (id 0) only.
    lengths = batch["token_mask"].sum(axis=1)
    assert (lengths > 3).all() and (batch["tokens"][batch["token_mask"] == 0] == 0).all()
    assert all((m[:n] == 1).all() for m, n in zip(batch["token_mask"], lengths))
    assert all(batch["counters"][k] == 0 for k in batch["counters"])
    assert set(pipeline.model_inputs(batch)) == set(batch) - {"counters"}


def test_without_text_batches_have_no_token_fields_and_captions_are_unread(base):
    config = cfg(base, num_epochs=1, caption_overflow="filter")
    batches = list(iterate(config, text=None))
    assert set(batches[0]) == {"images", "scale", "labels", "counters"}
    # No caption is filtered, as some are when read with a 20-token limit.
    assert len(batches) == N // 4 and batches[-1]["counters"]["caption_filtered"] == 0
    filtered = list(iterate(config, text=TextInputs(max_length=20)))
    assert filtered[-1]["counters"]["caption_filtered"] > 0


def test_tokenize_layout_matches_caption_dropout(base):
    config = cfg(base, caption_dropout=1.0)
    batch = next(iterate(config))
    tokenizer = os.path.join(shapes.make_builder(base.data_dir, 32, N, 0).data_dir,
                             shapes.TOKENIZER_FILE)
    empty_tokens, empty_mask = tokenizer_lib.tokenize([""] * 4, tokenizer, 40)
    np.testing.assert_array_equal(batch["tokens"], empty_tokens)
    np.testing.assert_array_equal(batch["token_mask"], empty_mask)
    assert (empty_mask.sum(1) == 1).all() and (empty_tokens[:, 0] == 1).all()  # EOS alone
    tokens, mask = tokenizer_lib.tokenize(["a red star " * 20, "a red star"], tokenizer, 8)
    assert mask[0].sum() == 8 and tokens[0, -1] == 1  # truncated, EOS kept last
    assert mask[1].sum() == 4 and (tokens[1, 4:] == 0).all()


def test_caption_dropout_rate_and_label_dropout(base):
    batches = take(iterate(cfg(base, caption_dropout=0.25, label_dropout=0.5), batch=8), 30)
    dropped = np.mean([(b["token_mask"].sum(1) == 1) for b in batches])
    no_label = np.mean([(b["labels"] == -1) for b in batches])
    assert 0.15 < dropped < 0.35 and 0.4 < no_label < 0.6


def test_same_seed_same_batches_other_seed_other_order(base):
    config = cfg(base)
    assert_same_batches(take(iterate(config), 5), take(iterate(config), 5))
    assert fingerprints(take(iterate(config, seed=1), 5)) != fingerprints(take(iterate(config), 5))


def test_an_epoch_holds_every_record_once_and_the_next_is_reshuffled(base):
    config = cfg(base, num_epochs=2)
    batches = list(iterate(config, batch=8))
    assert len(batches) == 2 * N // 8
    first, second = fingerprints(batches[:N // 8]), fingerprints(batches[N // 8:])
    assert len(set(first)) == N and set(first) == set(second) and first != second


def test_restored_state_gives_the_same_next_batches(base):
    # Filtering long captions makes the pipeline skip records: their counts, carried in
    # the state, must come back too.
    config, text = cfg(base, caption_overflow="filter"), TextInputs(max_length=20)
    uninterrupted = iterate(config, text=text)
    take(uninterrupted, 7)
    state = uninterrupted.get_state()
    expected = take(uninterrupted, 12)  # crosses into the second epoch
    assert expected[-1]["counters"]["caption_filtered"] > 0
    restored = iterate(config, text=text)
    restored.set_state(state)
    assert_same_batches(take(restored, 12), expected)


def test_orbax_checkpoint_resumes_exactly(base, tmp_path):
    config, text = cfg(base, caption_overflow="filter"), TextInputs(max_length=20)
    iterator = iterate(config, text=text)
    take(iterator, 3)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    expected = take(iterator, 6)  # advancing while the async save may still run
    manager.wait_until_finished()
    manager.close()

    restored = iterate(config, text=text)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    manager.restore(manager.latest_step(),
                    args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    manager.close()
    assert_same_batches(take(restored, 6), expected)


def test_flip_mirrors_some_images_and_keeps_the_rest(base):
    plain = take(iterate(cfg(base)), 4)
    flipped = take(iterate(cfg(base, random_flip=True)), 4)
    mirrored = kept = 0
    for a, b in zip(np.concatenate([p["images"] for p in plain]),
                    np.concatenate([f["images"] for f in flipped])):
        if np.array_equal(a, b):
            kept += 1
        else:
            np.testing.assert_array_equal(a[:, ::-1], b)
            mirrored += 1
    assert mirrored > 0 and kept > 0


def test_crops_take_the_centre_or_a_random_square():
    assert images.crop_box(40, 20, None) == (10, 0, 30, 20)
    assert images.crop_box(20, 40, 0.0) == (0, 0, 20, 20)
    assert images.crop_box(20, 40, 1.0) == (0, 20, 20, 40)
    image = images.Image.fromarray(np.arange(20 * 40 * 3, dtype=np.uint8).reshape(40, 20, 3))
    np.testing.assert_array_equal(images.square(image, 20, 1.0), np.asarray(image)[20:])


def test_to_global_arrays_shards_the_batch_over_the_mesh(base):
    batch = pipeline.model_inputs(next(iterate(cfg(base), batch=8)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    arrays = pipeline.to_global_arrays(batch, mesh, PartitionSpec(("data", "fsdp")))
    for key, value in arrays.items():
        assert value.shape == batch[key].shape
        assert len(value.sharding.device_set) == 8
        assert value.addressable_shards[0].data.shape[0] == 1  # one example per device
        np.testing.assert_array_equal(np.asarray(value), batch[key])


def test_config_errors_name_the_fix(base, tmp_path):
    with pytest.raises(ValueError, match="data.dataset must be one of shapes, image_text"):
        data_config.validate(cfg(base, dataset="laion"))
    with pytest.raises(ValueError, match="data.crop must be one of center, random"):
        data_config.validate(cfg(base, crop="middle"))
    with pytest.raises(ValueError, match="caption_dropout must be in"):
        data_config.validate(cfg(base, caption_dropout=1.5))
    with pytest.raises(ValueError, match="no split 'test'.*train, validation"):
        data_config.validate(cfg(base, split="test"))
    with pytest.raises(ValueError, match="divisible"):
        iterate(cfg(base), batch=6, process_count=4)


def test_text_input_errors_name_the_fix(base, tmp_path):
    missing = TextInputs(tokenizer=str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="text.tokenizer .*missing.model' does not exist.*"
                                         "mdm_jax.train_tokenizer"):
        iterate(cfg(base), text=missing)
    with pytest.raises(ValueError, match="text.max_length must be >= 2"):
        data_config.check_text_inputs(cfg(base), TextInputs(max_length=1))
    # The shapes data set's own tokenizer gone: rebuilding it brings it back.
    other = cfg(base, data_dir=str(tmp_path / "tfds"))
    other.shapes.num_examples = 8
    folder = shapes.build(other.data_dir, 32, 8, 0, num_processes=1)
    os.remove(os.path.join(folder, shapes.TOKENIZER_FILE))
    with pytest.raises(ValueError, match="tokenizer .* is missing: run `python -m "
                                         "mdm_jax.build_data"):
        data_config.check_text_inputs(other, TextInputs())
    assert data_config.check_text_inputs(other, None) is None  # no text, no tokenizer needed


def test_precomputed_embeddings_replace_tokens(base, tmp_path):
    """Example i gets record i's embedding; a dropped caption gets the embedding of ""."""
    directory, width, length = str(tmp_path / "emb"), 3, 6
    writer = text_embeddings.Writer(directory, N, width, length, "float32", num_shards=2,
                                    text_config={})
    for i in range(N):  # example i: i + 1 tokens (at most `length`), every value i
        writer.write(i, np.full((min(i, length - 1) + 1, width), i, np.float32))
    writer.close(np.full((1, width), -1, np.float32))
    text = TextInputs(max_length=length, embeddings_dir=directory)
    batches = take(iterate(cfg(base, caption_dropout=0.0, shuffle=False), text=text), 2)
    batch = batches[1]  # records 4..7
    assert set(batch) == {"images", "scale", "text_embeddings", "token_mask", "labels",
                          "counters"}
    assert batch["text_embeddings"].shape == (4, length, width)
    np.testing.assert_array_equal(batch["token_mask"].sum(1), [5, 6, 6, 6])
    assert (batch["text_embeddings"][:, 0, 0] == [4, 5, 6, 7]).all()
    dropped = next(iterate(cfg(base, caption_dropout=1.0), text=text))
    assert (dropped["token_mask"].sum(1) == 1).all()
    assert (dropped["text_embeddings"][:, 0] == -1).all()
    with pytest.raises(ValueError, match="set text.max_length=6"):
        iterate(cfg(base), text=TextInputs(max_length=7, embeddings_dir=directory))


def test_unbuilt_data_set_error_gives_the_command_that_builds_it(base, tmp_path):
    config = cfg(base, data_dir=str(tmp_path))
    config.shapes.num_examples = 20
    with pytest.raises(ValueError, match="is not built") as error:
        data_config.validate(config)
    command = str(error.value).split("run `")[1].rstrip("`.")
    assert command.startswith("python -m mdm_jax.build_data --data.dataset=shapes")
    # What the message says to run, run: it builds exactly the data set asked for.
    flags = dict(f.split("=", 1) for f in command.split()[3:])
    shapes.build(flags["--data.data_dir"], int(flags["--data.shapes.image_size"]),
                 int(flags["--data.shapes.num_examples"]), int(flags["--data.shapes.seed"]),
                 num_processes=1)
    data_config.validate(config)


def test_synthetic_source_has_every_field_and_is_deterministic(base):
    config, text = cfg(base, dataset="synthetic", image_size=16), TextInputs(max_length=12)
    config.synthetic.num_classes = 10
    a, b = take(iterate(config, text=text), 3), take(iterate(config, text=text), 3)
    assert_same_batches(a, b)
    batch = a[0]
    assert batch["images"].shape == (4, 16, 16, 3) and batch["tokens"].shape == (4, 12)
    assert ((batch["labels"] >= 0) & (batch["labels"] < 10)).all()
    assert (batch["token_mask"].sum(1) >= 1).all()
    assert set(next(iterate(config, text=None))) == {"images", "scale", "labels", "counters"}


@pytest.mark.slow
def test_worker_processes_give_the_same_records_and_resume_exactly(base):
    """The one test with workers (each takes seconds to start)."""
    config = cfg(base, num_epochs=1)
    in_process = list(iterate(config))
    iterator = iterate(cfg(config, num_workers=2))
    try:
        batches = list(iterator)  # each worker batches its half: 24 records, 6 batches
    finally:
        iterator.close()
    assert len(batches) == len(in_process) == N // 4
    assert sorted(fingerprints(batches)) == sorted(fingerprints(in_process))

    # Decoded (and skipped) in the workers, counted in the batches, resumed exactly.
    with_workers, text = cfg(base, num_workers=2, caption_overflow="filter"), TextInputs(
        max_length=20)
    first, second = iterate(with_workers, text=text), iterate(with_workers, text=text)
    try:
        take(first, 4)
        second.set_state(first.get_state())
        expected = take(first, 4)
        assert_same_batches(take(second, 4), expected)
        assert expected[-1]["counters"]["caption_filtered"] > 0
    finally:
        first.close()
        second.close()
