"""Round trip: real JPEG/PNG/WebP files in webdataset shards and a TSV, built with the
image_text builder and read back exactly through the grain pipeline; the build's summary
of what it skipped."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import config as data_config
from mdm_jax.data import image_text, pipeline
from mdm_jax.data import sources as data_sources
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.transforms import TextInputs
from mdm_jax.testing import source_files as sample_files

SIZE = 24
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixels(seed, height=SIZE, width=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Writes the sources; returns (manual dir, {caption: expected uint8 pixels, scale})."""
    manual = tmp_path_factory.mktemp("manual")
    expected = {}

    def add(caption, data, scale, crop=None):
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        expected[caption] = (decoded if crop is None else decoded[crop], scale)
        return data

    jpeg = add("a jpeg of noise", sample_files.encode(pixels(0), "JPEG", quality=90), SIZE)
    png = add("a png of noise", sample_files.encode(pixels(1), "PNG"), SIZE)
    webp = add("a lossless webp", sample_files.encode(pixels(2), "WEBP", lossless=True), SIZE)
    # 24 wide, 32 high: the centre crop drops 4 rows at the top and 4 at the bottom.
    tall = add("a tall png", sample_files.encode(pixels(3, 32, 24), "PNG"), SIZE,
               crop=np.s_[4:28])
    # img2dataset's JSON gives the original size of a downscaled download: scale says 480.
    small_of_big = add("a photo downscaled by the downloader",
                       sample_files.encode(pixels(4), "PNG"), 480)
    sample_files.write_tar(manual / "00000.tar", [
        ("000000000", {"jpg": jpeg, "txt": "a jpeg of noise"}),
        ("000000001", {"png": png, "txt": "a png of noise", "json": {"width": SIZE}}),
        ("000000002", {"webp": webp, "txt": "a lossless webp"}),
    ])
    sample_files.write_tar(manual / "00001.tar", [
        ("000001000", {"png": tall, "txt": "a tall png"}),
        ("000001001", {"png": small_of_big, "txt": "a photo downscaled by the downloader",
                       "json": {"original_width": 640, "original_height": 480}}),
    ])
    (manual / "images").mkdir()
    tsv_jpeg = add("listed in a tsv", sample_files.encode(pixels(5), "JPEG", quality=95), SIZE)
    (manual / "images" / "x.jpg").write_bytes(tsv_jpeg)
    tsv_png = add("caf\u00e9 au lait, listed too", sample_files.encode(pixels(6), "PNG"), SIZE)
    (manual / "images" / "y.png").write_bytes(tsv_png)
    sample_files.write_tsv(manual / "pairs.tsv", [
        ("images/x.jpg", "listed in a tsv"), ("images/y.png", "caf\u00e9 au lait, listed too")])
    return manual, expected


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    manual, expected = sources
    config = data_config.get_data_config()
    config.update(dict(dataset="image_text", data_dir=str(tmp_path_factory.mktemp("tfds")),
                       manual_dir=str(manual), image_size=SIZE, caption_dropout=0.0,
                       num_epochs=1, shuffle=False))
    image_text.build(config.data_dir, config.manual_dir)
    return config, expected


def test_train_tokenizer_command_then_round_trip(built, tmp_path):
    config, expected = built
    output = tmp_path / "captions.model"
    subprocess.run(
        [sys.executable, "-m", "mdm_jax.train_tokenizer", "--data.dataset=image_text",
         f"--data.data_dir={config.data_dir}", f"--output={output}", "--vocab_size=200"],
        check=True, cwd=REPO, capture_output=True)
    tok = tokenizer_lib.load(str(output))
    batches = list(pipeline.make_iterator(
        config, global_batch_size=1, text=TextInputs(tokenizer=str(output), max_length=24),
        process_index=0, process_count=1))
    assert len(batches) == len(expected) == 7
    seen = set()
    for batch in batches:
        ids = batch["tokens"][0][batch["token_mask"][0] == 1]
        assert ids[-1] == tok.eos_id
        caption = tok._sp.decode(ids[:-1].tolist())
        image, scale = expected[caption]
        got = np.rint((batch["images"][0] + 1) * 127.5).astype(np.uint8)
        np.testing.assert_array_equal(got, image)  # decoded, cropped, nothing else
        assert batch["scale"][0] == scale
        seen.add(caption)
    assert seen == set(expected)
    assert sum(batches[-1]["counters"].values()) == 0


def test_captions_without_a_tokenizer_is_an_error_naming_the_fix(built):
    config, _ = built
    with pytest.raises(ValueError, match="has captions but text.tokenizer is empty: set it.*"
                                         "python -m mdm_jax.train_tokenizer"):
        pipeline.make_iterator(config, global_batch_size=1, text=TextInputs(),
                               process_index=0, process_count=1)


def test_build_ends_with_one_summary_naming_each_skipped_shard(tmp_path, caplog):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "corrupt.tar").write_bytes(b"not a tar file at all" * 100)
    # In 00002.tar k1 has no caption and k2 no image; 00003.tar, in the range, is missing.
    sample_files.write_tar(manual / "00002.tar", [
        ("k0", {"png": sample_files.encode(pixels(7), "PNG"), "txt": "kept"}),
        ("k1", {"png": sample_files.encode(pixels(8), "PNG")}),
        ("k2", {"txt": "a caption alone"})])
    config = data_config.get_data_config()
    config.update(dict(dataset="image_text", data_dir=str(tmp_path / "tfds"),
                       manual_dir=str(manual)))
    config.image_text.sources = "corrupt.tar,{00002..00003}.tar"
    with caplog.at_level("INFO"):
        data_sources.build(config)
    summary = data_sources.build_summary(config)
    assert summary.skipped and summary.num_examples == {"train": 1}
    assert summary.build_counters["train"] == {
        "skipped_missing_shard": 1, "skipped_unreadable_shard": 1,
        "skipped_missing_caption": 1, "skipped_missing_image": 1}
    text = str(summary)
    corrupt, missing = manual / "corrupt.tar", manual / "00003.tar"
    assert f"{corrupt}: unreadable (ReadError" in text and f"{missing}: missing" in text
    assert "skipped_missing_caption 1, skipped_missing_image 1" in text
    # The build logs one message of its own (tfds logs more): the summary, as a warning.
    logged = [r for r in caplog.records if r.filename == "sources.py"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [("WARNING", text)]
    print(text)


def test_sources_expand_ranges_and_globs(sources):
    manual, _ = sources
    files, missing = image_text.expand_sources(str(manual), "{00000..00003}.tar, *.tsv")
    assert [os.path.basename(f) for f in files] == ["00000.tar", "00001.tar", "pairs.tsv"]
    assert missing == [str(manual / "00002.tar"), str(manual / "00003.tar")]


def test_no_sources_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        image_text.build(str(tmp_path / "tfds"), str(tmp_path))
