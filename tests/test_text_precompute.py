"""Precomputed text embeddings: written by precompute.py, read back as the pipeline will,
equal to what the encoder gives for the same captions, unconditional input included.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from mdm_jax.conditioning import precompute
from mdm_jax.conditioning import text as conditioning_text
from mdm_jax.data import text_embeddings as embeddings
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.models import text
from tiny_t5 import write_tiny_t5

torch = pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")
transformers = pytest.importorskip("transformers")

MAX_LENGTH = 12
CAPTIONS = [
    "a red circle on a beige background",
    "two blue squares",
    "",
    "a green triangle and a purple star on a striped sage background " * 3,  # truncated
    "one black hexagon",
    "a pink star",
    "three yellow circles on slate",
]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny random T5 with a sentencepiece model trained on the captions."""
    return write_tiny_t5(str(tmp_path_factory.mktemp("t5") / "ckpt"), CAPTIONS)


def t5_config(checkpoint_dir):
    cfg = text.text_encoder_config(kind="t5", max_length=MAX_LENGTH)
    cfg.t5.checkpoint_dir = checkpoint_dir
    return cfg


def direct_encoding(cfg, captions):
    module, params = text.load_text_encoder(cfg)
    tokens, mask = tokenizer_lib.tokenize(captions, text.tokenizer_path(cfg), cfg.max_length)
    return np.asarray(jax.jit(text.encode, static_argnums=0)(module, params, tokens, mask)), mask


def test_records_equal_the_encoder_output_in_example_order(checkpoint_dir, tmp_path):
    cfg = t5_config(checkpoint_dir)
    out = str(tmp_path / "emb")
    metadata = precompute.precompute_embeddings(CAPTIONS, cfg, out, batch_size=3, num_shards=3,
                                                storage_dtype="float32")
    assert (metadata["num_examples"], metadata["width"], len(metadata["files"])) == (7, 32, 3)
    expected, expected_mask = direct_encoding(cfg, CAPTIONS)
    source = embeddings.data_source(out)
    assert len(source) == len(CAPTIONS)
    for i in range(len(CAPTIONS)):
        index, embedding, mask = embeddings.decode_record(source[i], metadata)
        assert index == i
        np.testing.assert_array_equal(mask, expected_mask[i])
        np.testing.assert_allclose(embedding, expected[i], rtol=0, atol=1e-5)
    assert expected_mask[3].sum() == MAX_LENGTH  # the long caption was cut, EOS kept


def test_unconditional_embedding_is_the_empty_caption(checkpoint_dir, tmp_path):
    """Caption dropout with precomputed embeddings uses what sampling's "" prompt gives."""
    cfg = t5_config(checkpoint_dir)
    out = str(tmp_path / "emb")
    precompute.precompute_embeddings(CAPTIONS[:2], cfg, out, batch_size=2,
                                     storage_dtype="float32")
    embedding, mask = embeddings.unconditional(out)
    sampler_cfg = conditioning_text.precomputed_source_config(
        text.text_encoder_config(kind="precomputed", precomputed_dir=out))
    expected, expected_mask = direct_encoding(sampler_cfg, [""])
    np.testing.assert_array_equal(mask, expected_mask[0])
    assert mask.sum() == 1  # EOS alone
    np.testing.assert_allclose(embedding, expected[0], rtol=0, atol=1e-5)


def test_bfloat16_storage_rounds_the_float32_embeddings(checkpoint_dir, tmp_path):
    cfg = t5_config(checkpoint_dir)
    wide = precompute.precompute_embeddings(CAPTIONS, cfg, str(tmp_path / "f32"), batch_size=4,
                                            storage_dtype="float32")
    narrow = precompute.precompute_embeddings(CAPTIONS, cfg, str(tmp_path / "bf16"),
                                              batch_size=4)
    assert narrow["dtype"] == "bfloat16"
    for i in range(len(CAPTIONS)):
        _, e32, _ = embeddings.decode_record(
            embeddings.data_source(str(tmp_path / "f32"))[i], wide)
        _, e16, _ = embeddings.decode_record(
            embeddings.data_source(str(tmp_path / "bf16"))[i], narrow)
        assert e16.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(e16, e32.astype(ml_dtypes.bfloat16))


def test_precomputed_config_reports_the_stored_encoder(checkpoint_dir, tmp_path):
    out = str(tmp_path / "emb")
    precompute.precompute_embeddings(CAPTIONS[:1], t5_config(checkpoint_dir), out)
    cfg = text.text_encoder_config(kind="precomputed", precomputed_dir=out)
    assert conditioning_text.feature_dim(cfg) == 32
    assert text.load_text_encoder(cfg) == (None, None)
    source = conditioning_text.precomputed_source_config(cfg)
    assert text.tokenizer_path(source) == os.path.join(os.path.abspath(checkpoint_dir),
                                                       "spiece.model")
    with pytest.raises(FileExistsError, match="already holds embeddings"):
        precompute.precompute_embeddings(CAPTIONS[:1], t5_config(checkpoint_dir), out)


def test_incomplete_directory_is_refused(checkpoint_dir, tmp_path):
    out = tmp_path / "emb"
    precompute.precompute_embeddings(CAPTIONS[:1], t5_config(checkpoint_dir), str(out))
    os.remove(out / embeddings.METADATA)
    with pytest.raises(FileNotFoundError, match="not a finished"):
        embeddings.read_metadata(str(out))


def test_command_line(checkpoint_dir, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS[:3]) + "\n")
    out = tmp_path / "emb"
    subprocess.run(
        [sys.executable, "-m", "mdm_jax.precompute_text",
         f"--text.t5.checkpoint_dir={checkpoint_dir}", f"--text.max_length={MAX_LENGTH}",
         f"--captions_file={captions}", f"--output_dir={out}", "--num_shards=2"],
        check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True)
    metadata = json.loads((out / embeddings.METADATA).read_text())
    assert metadata["num_examples"] == 3 and len(metadata["files"]) == 2
    assert metadata["text_config"]["t5"]["checkpoint_dir"] == os.path.abspath(checkpoint_dir)
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from mdm_jax.data import shapes
    return shapes.build(str(tmp_path_factory.mktemp("tfds")), image_size=16, num_examples=12,
                        num_processes=1)


def test_default_data_set_captions_precompute_in_example_order(shapes_dir, tmp_path):
    from mdm_jax.data import shapes, shapes_render
    captions = precompute.DatasetCaptions(shapes_dir, "train", "caption")
    # tfds stores examples in its own (shuffled) order; index i is the source's record i.
    assert sorted(captions) == sorted(shapes_render.sample_scene(0, i).caption
                                      for i in range(12))
    directory = str(tmp_path / "t5")
    torch.manual_seed(0)
    transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=shapes.TOKENIZER_VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1,
        num_heads=4, feed_forward_proj="gated-gelu")).save_pretrained(directory)
    cfg = t5_config(directory)
    cfg.tokenizer = os.path.join(shapes_dir, shapes.TOKENIZER_FILE)
    out = str(tmp_path / "emb")
    metadata = precompute.precompute_embeddings(captions, cfg, out, batch_size=8, num_shards=2,
                                                storage_dtype="float32")
    expected, expected_mask = direct_encoding(cfg, list(captions))
    source = embeddings.data_source(out)
    for i in (0, 7, 8, 11):  # both shards, both batches
        index, embedding, mask = embeddings.decode_record(source[i], metadata)
        assert index == i
        np.testing.assert_array_equal(mask, expected_mask[i])
        np.testing.assert_allclose(embedding, expected[i], rtol=0, atol=1e-5)


def test_small_encoder_takes_the_default_data_set_vocabulary(shapes_dir):
    from mdm_jax.data import shapes, tokenizer
    path = os.path.join(shapes_dir, shapes.TOKENIZER_FILE)
    cfg = text.text_encoder_config(kind="small", tokenizer=path, max_length=MAX_LENGTH)
    module = text.build_text_encoder(
        conditioning_text.encoder_config(ml_collections.ConfigDict({"text": cfg})))
    assert module.vocab_size == tokenizer.load(path).vocab_size
    assert text.tokenizer_path(cfg) == path
