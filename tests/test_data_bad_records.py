"""Bad data: each case on a real file the test writes, converted or skipped and counted;
then all of them in one image_text data set, counted in the batches the pipeline yields,
with text and without (then captions are not read, and only their checks are gone)."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import config as data_config
from mdm_jax.data import counters, image_text, pipeline, records, transforms
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.transforms import TextInputs
from mdm_jax.testing import source_files as sample_files

SIZE = 16
RED = (200, 30, 40)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    words = ["a red square", "a photo of a cat", "two dogs on a beach", "caf\u00e9 at night"]
    return tokenizer_lib.train(words * 20, tmp_path_factory.mktemp("tok") / "t.model",
                               vocab_size=64)


def spec(tokenizer="", **overrides):
    values = dict(image_size=SIZE, random_crop=False, random_flip=False,
                  max_image_pixels=10_000, tokenizer=tokenizer, max_length=8,
                  filter_long_captions=False, caption_dropout=0.0, label_dropout=0.0,
                  has_label=False)
    values.update(overrides)
    return transforms.ExampleSpec(**values)


def process(data, tokenizer="", caption=b"a red square", width=0, height=0, **overrides):
    record = records.record(data, width, height, caption=caption if tokenizer else None)
    example = transforms.ProcessRecord(spec(tokenizer, **overrides)).random_map(
        record, np.random.default_rng(0))
    counts = {n: int(c) for n, c in zip(counters.READ_COUNTERS, example[counters.FIELD])
              if c}
    return example, counts


def written(tmp_path, name, pixels_or_image, fmt, **options):
    """Writes the image to a real file and reads its bytes back."""
    path = tmp_path / name
    path.write_bytes(sample_files.encode(pixels_or_image, fmt, **options))
    return path.read_bytes()


def solid(colour, size=SIZE, channels=3):
    return np.full((size, size, channels), colour, np.uint8)


def assert_kept_colour(example, rgb, atol=3):
    assert example["images"].shape == (SIZE, SIZE, 3)
    pixels = (example["images"] + 1) * 127.5
    np.testing.assert_allclose(pixels, np.broadcast_to(rgb, pixels.shape), atol=atol)


def png_16bit_rgb(pixels16):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow can't write one)."""
    height, width, _ = pixels16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels16)

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_good_rgb_jpeg_counts_nothing(tmp_path):
    example, counts = process(written(tmp_path, "a.jpg", solid(RED), "JPEG", quality=95))
    assert counts == {}
    assert_kept_colour(example, RED, atol=4)


def test_corrupt_bytes_are_skipped(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"this is not an image" * 10)
    example, counts = process(path.read_bytes())
    assert counts == {"corrupt_image": 1} and "images" not in example


def test_truncated_jpeg_is_skipped(tmp_path):
    data = written(tmp_path, "a.jpg", sample_files.photo(np.random.default_rng(0), 64, 64),
                   "JPEG")
    example, counts = process(data[:len(data) // 2])
    assert counts == {"corrupt_image": 1} and "images" not in example


def test_cmyk_jpeg_is_converted(tmp_path):
    cmyk = Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0))  # pure red in CMYK
    example, counts = process(written(tmp_path, "c.jpg", cmyk, "JPEG", quality=100))
    assert counts == {"converted_cmyk": 1}
    assert_kept_colour(example, (255, 0, 0), atol=4)


def test_greyscale_png_is_converted(tmp_path):
    example, counts = process(written(tmp_path, "g.png", np.full((SIZE, SIZE), 90, np.uint8),
                                      "PNG"))
    assert counts == {"converted_grey": 1}
    assert_kept_colour(example, (90, 90, 90), atol=0.01)


def test_black_and_white_png_is_converted(tmp_path):
    example, counts = process(written(tmp_path, "b.png", Image.new("1", (SIZE, SIZE), 1), "PNG"))
    assert counts == {"converted_grey": 1}
    assert_kept_colour(example, (255, 255, 255), atol=0.01)


def test_palette_png_is_converted(tmp_path):
    image = Image.fromarray(solid(RED)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    example, counts = process(written(tmp_path, "p.png", image, "PNG"))
    assert counts == {"converted_palette": 1}
    assert_kept_colour(example, RED, atol=0.01)


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (SIZE, SIZE), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    example, counts = process(written(tmp_path, "pt.png", image, "PNG", transparency=0))
    assert counts == {"converted_palette": 1, "converted_alpha": 1}
    assert_kept_colour(example, (255, 255, 255), atol=0.01)


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = RED
    rgba[..., 3] = 128  # half transparent: half way to white
    example, counts = process(written(tmp_path, "a.png", rgba, "PNG"))
    assert counts == {"converted_alpha": 1}
    expected = [round(c * 128 / 255 + 255 * 127 / 255) for c in RED]
    assert_kept_colour(example, expected, atol=1.01)


def test_grey_alpha_png_is_converted(tmp_path):
    la = Image.fromarray(np.stack([np.full((SIZE, SIZE), 40, np.uint8),
                                   np.full((SIZE, SIZE), 255, np.uint8)], -1), "LA")
    example, counts = process(written(tmp_path, "la.png", la, "PNG"))
    assert counts == {"converted_grey": 1, "converted_alpha": 1}
    assert_kept_colour(example, (40, 40, 40), atol=0.01)


def test_16bit_grey_png_keeps_its_top_bits(tmp_path):
    grey16 = np.full((SIZE, SIZE), 0x8000, np.uint16)  # half scale
    example, counts = process(written(tmp_path, "g16.png", grey16, "PNG"))
    assert counts == {"converted_grey": 1, "converted_16bit": 1}
    assert_kept_colour(example, (128, 128, 128), atol=0.01)


def test_16bit_rgb_png_is_converted(tmp_path):
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_16bit_rgb(np.broadcast_to(np.array(RED, np.uint16) * 257,
                                                   (SIZE, SIZE, 3))))
    example, counts = process(path.read_bytes())
    assert counts == {"converted_16bit": 1}
    assert_kept_colour(example, RED, atol=0.01)


def test_small_image_is_upscaled_and_its_scale_says_so(tmp_path):
    example, counts = process(written(tmp_path, "s.png", solid(RED, size=5), "PNG"))
    assert counts == {"upscaled_small": 1}
    assert_kept_colour(example, RED, atol=0.01)
    assert example["scale"] == 5  # the model learns it was a 5-pixel original


def test_enormous_png_is_skipped(tmp_path):
    example, counts = process(written(tmp_path, "big.png", solid(RED, size=120), "PNG"))
    assert counts == {"skipped_enormous": 1} and "images" not in example


def test_enormous_jpeg_decodes_at_reduced_scale(tmp_path):
    # 128x128 is above max_pixels, but libjpeg's 1/8 scale (16x16) is not: kept, cheaply.
    example, counts = process(written(tmp_path, "big.jpg", solid(RED, size=128), "JPEG",
                                      quality=95))
    assert counts == {}
    assert_kept_colour(example, RED, atol=4)
    assert example["scale"] == 128


def test_webp_with_alpha_is_composited(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = RED
    example, counts = process(written(tmp_path, "t.webp", rgba, "WEBP", lossless=True))
    assert counts == {"converted_alpha": 1}
    assert_kept_colour(example, (255, 255, 255), atol=0.01)


def test_empty_caption_is_skipped(tmp_path, tokenizer_path):
    data = written(tmp_path, "a.png", solid(RED), "PNG")
    for caption in (b"", b"  \t "):
        example, counts = process(data, tokenizer_path, caption)
        assert counts == {"skipped_empty_caption": 1} and "images" not in example


def test_non_utf8_caption_is_converted(tmp_path, tokenizer_path):
    data = written(tmp_path, "a.png", solid(RED), "PNG")
    example, counts = process(data, tokenizer_path, "caf\u00e9 at night".encode("cp1252"),
                              max_length=32)
    assert counts == {"converted_caption_utf8": 1}
    expected, _ = tokenizer_lib.tokenize(["caf\u00e9 at night"], tokenizer_path, 32)
    np.testing.assert_array_equal(example["tokens"], expected[0])


def test_long_caption_is_truncated_keeping_eos(tmp_path, tokenizer_path):
    data = written(tmp_path, "a.png", solid(RED), "PNG")
    example, counts = process(data, tokenizer_path, b"a photo of a cat " * 5)
    assert counts == {"caption_truncated": 1}
    assert example["token_mask"].sum() == 8
    assert example["tokens"][-1] == tokenizer_lib.load(str(tokenizer_path)).eos_id


def test_long_caption_is_filtered_when_configured(tmp_path, tokenizer_path):
    data = written(tmp_path, "a.png", solid(RED), "PNG")
    example, counts = process(data, tokenizer_path, b"a photo of a cat " * 5,
                              filter_long_captions=True)
    assert counts == {"caption_filtered": 1} and "images" not in example


def test_unexpected_error_is_counted_not_raised():
    # A record without image bytes at all (a builder bug, say) must not stop training.
    example = transforms.ProcessRecord(spec()).random_map(
        {records.WIDTH: 1, records.HEIGHT: 1}, np.random.default_rng(0))
    assert example[counters.FIELD][counters.READ_INDEX["skipped_error"]] == 1
    assert "images" not in example


def read_shard(path):
    """(keys read, {counter: count} of the non-zero ones, [path, reason] of a skipped shard)."""
    skips = counters.BuildSkips()
    read = image_text.read_tsv if str(path).endswith(".tsv") else image_text.read_tar
    keys = [key for key, _ in read(str(path), skips)]
    return keys, {name: count for name, count in skips.counts.items() if count}, skips.shards


def test_image_without_caption_file_is_skipped_at_build(tmp_path):
    png = sample_files.encode(solid(RED), "PNG")
    path = sample_files.write_tar(tmp_path / "a.tar", [
        ("k0", {"png": png}), ("k1", {"png": png, "txt": "a red square"}),
        ("k2", {"txt": "a caption alone"})])
    assert read_shard(path) == (["k1"], {"skipped_missing_caption": 1,
                                         "skipped_missing_image": 1}, [])


def test_missing_shard_is_counted_at_build(tmp_path):
    for name in ("00000.tar", "00002.tar"):
        sample_files.write_tar(tmp_path / name, [])
    files, missing = image_text.expand_sources(str(tmp_path), "{00000..00002}.tar")
    assert [os.path.basename(f) for f in files] == ["00000.tar", "00002.tar"]
    assert missing == [str(tmp_path / "00001.tar")]


def test_truncated_shard_keeps_the_samples_before_the_damage(tmp_path):
    png = sample_files.encode(solid(RED), "PNG")
    path = sample_files.write_tar(tmp_path / "a.tar", [
        (f"k{i}", {"png": png, "txt": "a red square"}) for i in range(3)])
    data = path.read_bytes()
    # Each sample fills four 512-byte blocks: cut the third one's header in two.
    path.write_bytes(data[:8 * 512 + 100])
    assert read_shard(path) == (["k0", "k1"], {"skipped_unreadable_shard": 1}, [
        [str(path), "cut short (no end-of-archive block); samples kept from before the "
                    "damage: 2"]])
    path.write_bytes(data[:4 * 512 + 1024 + 100])  # inside the second sample's caption
    keys, counts, [(_, reason)] = read_shard(path)
    assert (keys, counts) == (["k0"], {"skipped_unreadable_shard": 1})
    assert reason.endswith("samples kept from before the damage: 1")


def test_unreadable_shard_is_skipped(tmp_path):
    path = tmp_path / "a.tar"
    path.write_bytes(b"not a tar file at all" * 100)
    assert read_shard(path) == ([], {"skipped_unreadable_shard": 1}, [
        [str(path), "unreadable (ReadError: file could not be opened successfully); "
                    "samples kept from before the damage: 0"]])


def test_tsv_row_whose_image_is_missing_is_skipped(tmp_path):
    (tmp_path / "here.png").write_bytes(sample_files.encode(solid(RED), "PNG"))
    path = sample_files.write_tsv(tmp_path / "list.tsv", [
        ("here.png", "a red square"), ("gone.png", "a red square")])
    assert read_shard(path) == (["1"], {"skipped_missing_image": 1}, [])


def build_bad_data_set(root):
    """An image_text data set holding one of every bad case, and three good records."""
    manual = root / "manual"
    red_png = sample_files.encode(solid(RED), "PNG")
    cmyk = sample_files.encode(Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)), "JPEG")
    grey = sample_files.encode(np.full((SIZE, SIZE), 90, np.uint8), "PNG")
    sample_files.write_tar(manual / "00000.tar", [
        ("good0", {"png": red_png, "txt": "a red square"}),
        ("junk", {"jpg": b"not an image", "txt": "a red square"}),
        ("cmyk", {"jpg": cmyk, "txt": "a red square"}),
        ("nocaption", {"png": red_png}),                     # build: missing caption
        ("noimage", {"txt": "a caption alone"}),             # build: missing image
        ("empty", {"png": red_png, "txt": ""}),
        ("latin", {"png": grey, "txt": "caf\u00e9 at night".encode("cp1252")}),
        ("long", {"png": red_png, "txt": "a photo of a cat " * 20}),
    ])
    truncated = sample_files.write_tar(manual / "00002.tar", [
        ("good1", {"png": red_png, "txt": "two dogs on a beach"}),
        ("lost", {"png": sample_files.encode(sample_files.photo(
            np.random.default_rng(1), 64, 64), "PNG"), "txt": "a photo of a cat"}),
    ])
    # good1 fills four 512-byte blocks (two headers, two data); cut inside the next sample.
    truncated.write_bytes(truncated.read_bytes()[:4 * 512 + 700])
    (manual / "pics").mkdir()
    (manual / "pics" / "small.png").write_bytes(sample_files.encode(solid(RED, 5), "PNG"))
    sample_files.write_tsv(manual / "list.tsv", [("pics/small.png", "a red square"),
                                                 ("pics/gone.png", "a red square")])
    config = data_config.get_data_config()
    config.update(dict(dataset="image_text", data_dir=str(root / "tfds"),
                       manual_dir=str(manual), image_size=SIZE, caption_dropout=0.0,
                       num_epochs=1, shuffle=False))
    # 00001.tar is named by the pattern but missing.
    config.image_text.sources = "{00000..00002}.tar,list.tsv"
    image_text.build(config.data_dir, config.manual_dir, sources=config.image_text.sources)
    return config


def read_all(config, text):
    return list(pipeline.make_iterator(config, global_batch_size=1, text=text,
                                       process_index=0, process_count=1))


BUILD_COUNTS = dict(skipped_missing_shard=1, skipped_unreadable_shard=1,
                    skipped_missing_caption=1, skipped_missing_image=2)


def test_pipeline_counts_every_bad_record(tmp_path, tokenizer_path):
    config = build_bad_data_set(tmp_path)
    batches = read_all(config, TextInputs(tokenizer=str(tokenizer_path), max_length=32))
    expected = dict.fromkeys(counters.READ_COUNTERS + counters.BUILD_COUNTERS, 0)
    expected.update(corrupt_image=1, converted_cmyk=1, skipped_empty_caption=1,
                    converted_caption_utf8=1, converted_grey=1, caption_truncated=1,
                    upscaled_small=1, **BUILD_COUNTS)
    assert batches[-1]["counters"] == expected
    # Kept: good0, cmyk, latin, long, good1 (before the damage) and small.png.
    assert len(batches) == 6
    # Totals only grow, batch by batch, and the first batch already has the build's.
    totals = [sum(b["counters"].values()) for b in batches]
    assert totals == sorted(totals) and batches[0]["counters"]["skipped_missing_shard"] == 1


def test_without_text_images_are_still_checked_and_counted(tmp_path):
    config = build_bad_data_set(tmp_path)
    batches = read_all(config, None)  # no tokenizer needed
    assert "tokens" not in batches[0] and "token_mask" not in batches[0]
    expected = dict.fromkeys(counters.READ_COUNTERS + counters.BUILD_COUNTERS, 0)
    expected.update(corrupt_image=1, converted_cmyk=1, converted_grey=1, upscaled_small=1,
                    **BUILD_COUNTS)
    assert batches[-1]["counters"] == expected
    # The caption checks are gone: the record with an empty caption is kept too.
    assert len(batches) == 7
