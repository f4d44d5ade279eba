"""Video data sets. video: real files written with PyAV (H.264 in .mp4 in WebVid's layout,
VP9 in .webm and MPEG-4 in .avi listed by path), built and read back frame for frame; a
missing, a corrupt, a truncated, a too-short and a too-small video skipped and counted.
The pipeline's clips, images of the first frame, flips and errors. moving_shapes:
reproducible, captions that say how the shape moves (measured on the pixels), labels,
its tokenizer, and its clips through the pipeline."""
import io
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import config as data_config
from mdm_jax.data import (
    counters,
    moving_shapes,
    pipeline,
    records,
    shapes_render,
    transforms,
    video,
)
from mdm_jax.data import sources as data_sources
from mdm_jax.data import tokenizer as tokenizer_lib
from mdm_jax.data.transforms import TextInputs
from mdm_jax.data.worker_builder import validation_size
from mdm_jax.testing import source_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES, STRIDE = 16, 4, 2  # the video data sets: 4 frames, every 2nd, 16 pixels
PAGE = "000001_000050"
# Measured (16-pixel crops of smooth pans with 40-level edges): the stored JPEG frames
# (quality 95, 4:4:4) differ from the builder's pixels by 1.5 to 1.8 levels on average, 11
# at most; the decoded video from the pixels written by 2.4 (H.264, crf 18), 3.0 (VP9) and
# 4.5 (MPEG-4, qscale 2) on average, while neighbouring frames differ by 8.5 to 11.
JPEG_MEAN, JPEG_MAX, CODEC_MEAN = 2.5, 16, 6.0
# Captions: a comma and a quote exercise the CSV's quoting.
GOOD = {  # caption: (relative path, codec, encoder options, frames, height, width)
    'a pan over hills, at "dusk"': (f"{PAGE}/1001.mp4", "libx264", {"crf": "18"}, 10, 32, 40),
    "a second pan, h264 too": (f"{PAGE}/1002.mp4", "libx264", {"crf": "18"}, 8, 40, 32),
    "a portrait pan in vp9": ("clips/portrait.webm", "libvpx-vp9", {}, 9, 40, 24),
    "an mpeg-4 pan in an avi": ("clips/square.avi", "mpeg4", {"qscale": "2"}, 8, 32, 32),
}
BAD = {  # videoid in PAGE: the counter its row adds
    "missing": "skipped_missing_video",
    "garbage": "skipped_unreadable_video",
    "truncated": "skipped_unreadable_video",
    "short": "skipped_short_video",
    "small": "skipped_small_video",
}
DIRECTION = re.compile(r"(" + "|".join(shapes_render.COLOURS) + r") ("
                       + "|".join(shapes_render.SHAPES) + r") mov(?:ing|es) (\w+)")


def write_videos(manual):
    """The sources; returns {caption: uint8 [T, H, W, 3] as written}."""
    rng = np.random.default_rng(0)
    written = {}
    for caption, (relative, codec, options, n, height, width) in GOOD.items():
        written[caption] = source_files.panning_frames(rng, n, height, width)
        source_files.write_video(manual / relative, written[caption], codec=codec, **options)
    page = manual / PAGE
    source_files.write_video(page / "short.mp4", source_files.panning_frames(rng, 7, 32, 32))
    source_files.write_video(page / "small.mp4", source_files.panning_frames(rng, 10, 12, 20))
    (page / "garbage.mp4").write_bytes(rng.bytes(3000))
    whole = (page / "1001.mp4").read_bytes()
    (page / "truncated.mp4").write_bytes(whole[:len(whole) // 2])
    webvid = [caption for caption in GOOD if GOOD[caption][0].startswith(PAGE)]
    rows = [dict(videoid=os.path.basename(GOOD[c][0])[:-4], name=c) for c in webvid]
    rows += [dict(videoid=name, name=f"a video that is {name}") for name in BAD]
    source_files.write_video_csv(manual / "results.csv", [
        dict(videoid=row["videoid"], contentUrl=f"https://example.com/{row['videoid']}.mp4",
             duration="PT00H00M10S", page_dir=PAGE, name=row["name"]) for row in rows])
    source_files.write_video_csv(manual / "paths.csv", [
        dict(name=c, path=GOOD[c][0]) for c in GOOD if not GOOD[c][0].startswith(PAGE)])
    return written


def video_config(root, manual, csv, **overrides):
    config = data_config.get_data_config()
    config.update(dict(dataset="video", data_dir=str(root), manual_dir=str(manual),
                       image_size=SIZE, caption_dropout=0.0, shuffle=False, num_epochs=1))
    config.video.update(dict(csv=csv, image_size=SIZE, num_frames=FRAMES,
                             frame_stride=STRIDE))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both CSVs built; returns (webvid config, paths config, {caption: frames written},
    a tokenizer trained on the captions)."""
    manual = tmp_path_factory.mktemp("manual")
    written = write_videos(manual)
    root = tmp_path_factory.mktemp("tfds")
    webvid, paths = (video_config(root, manual, csv) for csv in ("results.csv", "paths.csv"))
    for config in (webvid, paths):
        data_sources.build(config, num_processes=1)
    tokenizer = tokenizer_lib.train(list(GOOD) * 10, root / "videos.model", vocab_size=80)
    return webvid, paths, written, str(tokenizer)


def square(pixels):
    """The builder's crop, written out again: the shorter side to SIZE (bicubic), centred."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    left, top = (width - side) / 2, (height - side) / 2
    return np.asarray(Image.fromarray(pixels).resize(
        (SIZE, SIZE), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)),
        np.int32)


def pyav_frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stored(built):
    """{caption: (record, uint8 frames decoded from it)} of both data sets."""
    out = {}
    for config in built[:2]:
        source = data_sources.open_source(config)[0]
        for record in (source[i] for i in range(len(source))):
            frames = [np.asarray(Image.open(io.BytesIO(f)), np.int32)
                      for f in record[records.FRAMES]]
            out[record[records.CAPTION].decode()] = record, np.stack(frames)
    return out


def test_round_trip_frames_are_the_videos_sampled_frames(built):
    webvid, _, written, _ = built
    clips = stored(built)
    assert set(clips) == set(GOOD)
    for caption, (record, frames) in clips.items():
        relative, _, _, n, height, width = GOOD[caption]
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        assert (record[records.WIDTH], record[records.HEIGHT]) == (width, height)
        assert record[records.FPS] == pytest.approx(24.0)
        sampled = range(0, FRAMES * STRIDE, STRIDE)  # frames 0, 2, 4, 6
        decoded = pyav_frames(os.path.join(webvid.manual_dir, relative))
        assert len(decoded) == n
        errors = np.abs(frames - np.stack([square(decoded[i]) for i in sampled]))
        assert errors.mean() <= JPEG_MEAN and errors.max() <= JPEG_MAX, caption
        # Against what was written, the right frames are near and their neighbours far:
        # the stride and the start are the ones asked for.
        codec = np.abs(frames - np.stack([square(written[caption][i]) for i in sampled]))
        neighbours = np.abs(frames - np.stack([square(written[caption][i + 1])
                                               for i in sampled]))
        assert codec.mean() <= CODEC_MEAN and codec.mean() < neighbours.mean() / 2, caption


def test_build_skips_and_counts_each_bad_video(built):
    webvid, paths, _, _ = built
    summary = data_sources.build_summary(webvid)
    assert summary.num_examples == {"train": 2}
    expected = dict.fromkeys(counters.VIDEO_COUNTERS, 0)
    for counter in BAD.values():
        expected[counter] += 1
    assert summary.build_counters["train"] == expected
    text = str(summary)
    page = os.path.join(webvid.manual_dir, PAGE)
    for line in (f"{page}/missing.mp4: missing",
                 f"{page}/garbage.mp4: unreadable (InvalidDataError",
                 f"{page}/truncated.mp4: unreadable (InvalidDataError",
                 f"{page}/short.mp4: 7 frames, fewer than 8",
                 f"{page}/small.mp4: 20x12: shorter side below 16"):
        assert line in text, text
    assert not data_sources.build_summary(paths).skipped
    # The pipeline's counters start from the build's.
    batch = next(pipeline.make_iterator(webvid, global_batch_size=1, process_index=0,
                                        process_count=1))
    assert {k: batch["counters"][k] for k in expected} == expected


def test_pipeline_gives_clips_in_minus_one_to_one_with_tokens(built):
    _, paths, _, tokenizer = built
    clips = stored(built)
    text = TextInputs(tokenizer=tokenizer, max_length=16)
    (batch,) = pipeline.make_iterator(paths, global_batch_size=2, text=text,
                                      process_index=0, process_count=1)
    assert batch["images"].dtype == np.float32
    assert batch["images"].shape == (2, FRAMES, SIZE, SIZE, 3)
    assert -1 <= batch["images"].min() and batch["images"].max() <= 1
    tok = tokenizer_lib.load(tokenizer)
    for images, ids, mask, scale in zip(batch["images"], batch["tokens"],
                                        batch["token_mask"], batch["scale"]):
        caption = tok._sp.decode(ids[mask == 1][:-1].tolist())
        _, frames = clips[caption]
        np.testing.assert_array_equal(np.rint((images + 1) * 127.5), frames)
        assert scale == min(GOOD[caption][4:])  # the source's shorter side
    assert sum(batch["counters"].values()) == 0
    assert data_config.clip_frames(paths) == FRAMES


def test_one_frame_gives_images_and_fewer_frames_the_first_ones(built):
    _, paths, _, _ = built
    read = lambda **overrides: next(pipeline.make_iterator(
        video_config(paths.data_dir, paths.manual_dir, "paths.csv", **overrides),
        global_batch_size=2, process_index=0, process_count=1))["images"]
    clips = read()
    first = read(num_frames=1)
    assert first.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(first, clips[:, 0])
    np.testing.assert_array_equal(read(num_frames=2), clips[:, :2])
    assert data_config.clip_frames(video_config("", "", "x.csv", num_frames=1)) == 0
    # A smaller image_size resizes each stored frame down.
    small = read(image_size=8)
    assert small.shape == (2, FRAMES, 8, 8, 3)
    pooled = clips.reshape(2, FRAMES, 8, 2, 8, 2, 3).mean(axis=(3, 5))
    assert np.abs(small - pooled).mean() < 0.1


def test_random_flip_mirrors_every_frame_of_a_clip_alike(built):
    _, paths, _, _ = built

    def clips(**overrides):
        config = video_config(paths.data_dir, paths.manual_dir, "paths.csv", num_epochs=4,
                              **overrides)
        return [b["images"][0] for b in pipeline.make_iterator(
            config, global_batch_size=1, process_index=0, process_count=1)]

    flipped = 0
    for plain, maybe in zip(clips(), clips(random_flip=True)):
        mirrored = np.array_equal(maybe, plain[:, :, ::-1])
        assert mirrored or np.array_equal(maybe, plain)
        flipped += mirrored
    assert 0 < flipped < 8


def test_frame_counts_and_sizes_beyond_the_stored_are_errors_naming_the_fix(built):
    _, paths, _, _ = built
    config = video_config(paths.data_dir, paths.manual_dir, "paths.csv", num_frames=5)
    with pytest.raises(ValueError, match=r"data.num_frames=5 but the video data set stores 4 "
                                         r"frames a clip: set data.num_frames to at most 4.*"
                                         r"--data.video.num_frames=5"):
        pipeline.make_iterator(config, global_batch_size=1, process_index=0, process_count=1)
    config = video_config(paths.data_dir, paths.manual_dir, "paths.csv", image_size=32)
    with pytest.raises(ValueError, match=r"data.image_size=32 but the video data set stores "
                                         r"16-pixel frames.*--data.video.image_size=32"):
        data_config.validate(config)
    images = data_config.get_data_config()
    images.num_frames = 4
    with pytest.raises(ValueError, match="needs a video data set"):
        data_config.validate(images)


def test_a_record_whose_frames_do_not_decode_is_skipped_and_counted():
    spec = transforms.ExampleSpec(
        image_size=SIZE, random_crop=False, random_flip=False, max_image_pixels=10_000,
        tokenizer="", max_length=0, filter_long_captions=False, caption_dropout=0.0,
        label_dropout=0.0, has_label=False, num_frames=2)
    good = source_files.encode(np.zeros((SIZE, SIZE, 3), np.uint8), "PNG")
    for frames in ([good, b"not a frame"], [good[:40], good]):
        example = transforms.ProcessRecord(spec).random_map(
            records.video_record(frames, SIZE, SIZE, 24.0), np.random.default_rng(0))
        assert "images" not in example
        assert example[counters.FIELD][counters.READ_INDEX["corrupt_image"]] == 1


def test_csv_without_the_columns_is_an_error_naming_them(tmp_path):
    (tmp_path / "bad.csv").write_text("id,caption\n1,a cat\n")
    with pytest.raises(ValueError, match="needs a header row with `name`.*`path`.*`videoid`"):
        video.build(str(tmp_path / "tfds"), str(tmp_path), csv="bad.csv", image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="data.video.csv"):
        video.build(str(tmp_path / "tfds"), str(tmp_path), csv="none.csv", image_size=SIZE)


def test_variants_get_their_own_names():
    assert video.builder_config().name == "default_results_256px_16f_stride4"
    assert video.builder_config("webvid", "results_2M_val.csv", 64, 8, 2).name == (
        "webvid_results_2M_val_64px_8f_stride2")
    assert moving_shapes.builder_config().name == "64px_16f_10000_seed0"


# moving_shapes

MS = dict(image_size=64, num_frames=6, num_examples=8, seed=1)


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    root = tmp_path_factory.mktemp("moving")
    folder = moving_shapes.build(str(root), **MS, num_processes=1)
    config = data_config.get_data_config()
    config.update(dict(dataset="moving_shapes", data_dir=str(root), image_size=64))
    config.moving_shapes.update(MS)
    return config, folder


def centroids(frames, colour):
    """(x, y) centre of the pixels of `colour` in each frame. Within 20 levels: the fill
    and its mostly covered edge pixels, never the background (30 levels or more away from
    every shape colour, texture included) nor the outline."""
    near = np.abs(frames.astype(np.int32) - shapes_render.COLOURS[colour]).max(axis=-1) <= 20
    out = []
    for mask in near:
        y, x = np.nonzero(mask)
        assert len(x) >= 5  # the shape is in every frame
        out.append((x.mean(), y.mean()))
    return np.array(out)


def test_moving_shapes_move_as_their_captions_say(moving):
    config, _ = moving
    source = data_sources.open_source(config)[0]
    assert len(source) == MS["num_examples"]
    directions = set()
    for record in (source[i] for i in range(len(source))):
        caption = record[records.CAPTION].decode()
        colour, shape, direction = DIRECTION.search(caption).groups()
        assert record[records.LABEL] == shapes_render.class_index(shape, colour)
        frames = np.stack([np.asarray(Image.open(io.BytesIO(f)))
                           for f in record[records.FRAMES]])
        assert frames.shape == (MS["num_frames"], 64, 64, 3)
        path = centroids(frames, colour)
        along, across = (0, 1) if direction in ("left", "right") else (1, 0)
        sign = 1 if direction in ("right", "down") else -1
        steps = np.diff(path[:, along]) * sign
        # Each frame a step the caption's way (at least 30% of the side over the clip),
        # and nothing across it.
        assert (steps > 0).all() and steps.sum() >= 0.25 * 64, (caption, path)
        assert np.ptp(path[:, across]) < 0.5, (caption, path)
        directions.add(direction)
    assert len(directions) >= 3


def test_moving_shapes_are_reproducible_from_seed_and_index(moving):
    config, _ = moving
    source = data_sources.open_source(config)[0]
    stored_clips = {tuple(r[records.FRAMES]): (r[records.CAPTION].decode(), r[records.LABEL])
                    for r in (source[i] for i in range(len(source)))}
    # tfds orders records by a hash of their keys: clip i is somewhere in the split.
    made = {}
    for index in range(MS["num_examples"]):
        frames, caption, label = moving_shapes.make_example(1, index, 64, 6)
        made[tuple(frames)] = caption, label
    assert made == stored_clips
    assert tuple(moving_shapes.make_example(2, 0, 64, 6)[0]) not in made


def test_moving_shapes_ship_a_tokenizer_and_a_validation_split(moving):
    config, folder = moving
    tok = tokenizer_lib.Tokenizer(os.path.join(folder, moving_shapes.TOKENIZER_FILE))
    caption = moving_shapes.sample_clip(1, 0).scene.caption
    assert tokenizer_lib.load(tok.path)._sp.unk_id() not in tok.encode(caption)
    validation = config.copy_and_resolve_references()
    validation.split = "validation"
    assert data_sources.describe(validation).num_examples == validation_size(8)


def test_moving_shapes_through_the_pipeline(moving):
    config, _ = moving
    text = TextInputs(max_length=24)  # the data set's own tokenizer
    batch = next(pipeline.make_iterator(config, global_batch_size=4, text=text,
                                        process_index=0, process_count=1))
    assert batch["images"].shape == (4, 6, 64, 64, 3)
    assert set(batch) == {"images", "scale", "tokens", "token_mask", "labels", "counters"}
    assert (batch["scale"] == 64).all() and batch["tokens"].shape == (4, 24)
    config = config.copy_and_resolve_references()
    config.update(dict(num_frames=1, image_size=32))
    assert next(pipeline.make_iterator(config, global_batch_size=4, text=text,
                                       process_index=0, process_count=1))["images"].shape == (
        4, 32, 32, 3)


@pytest.mark.slow
def test_build_commands_build_both(moving, built, tmp_path):
    """python -m mdm_jax.build_data with two processes builds both data sets record for
    record as one process does, the video one ending with its summary."""
    config = moving[0].copy_and_resolve_references()
    flags = [f"--data.moving_shapes.{k}={v}" for k, v in MS.items()]
    subprocess.run([sys.executable, "-m", "mdm_jax.build_data", "--data.dataset=moving_shapes",
                    f"--data.data_dir={tmp_path}", "--num_processes=2", *flags],
                   check=True, cwd=REPO, capture_output=True)
    again = config.copy_and_resolve_references()
    again.data_dir = str(tmp_path)
    for split in ("train", "validation"):
        config.split = again.split = split
        one, two = (data_sources.open_source(c)[0] for c in (config, again))
        assert len(one) == len(two) > 0
        for i in range(len(one)):
            a, b = one[i], two[i]
            assert list(a.pop(records.FRAMES)) == list(b.pop(records.FRAMES)) and a == b
    config.split = "train"
    webvid = built[0]
    done = subprocess.run(
        [sys.executable, "-m", "mdm_jax.build_data", "--data.dataset=video",
         f"--data.data_dir={tmp_path}", f"--data.manual_dir={webvid.manual_dir}",
         "--data.video.csv=results.csv", f"--data.video.image_size={SIZE}",
         f"--data.video.num_frames={FRAMES}", f"--data.video.frame_stride={STRIDE}",
         "--num_processes=2"], check=True, cwd=REPO, capture_output=True, text=True)
    assert "skipped_missing_video 1, skipped_unreadable_video 2" in done.stderr
    one, two = (data_sources.open_source(c)[0] for c in (
        webvid, video_config(tmp_path, webvid.manual_dir, "results.csv")))
    assert len(one) == len(two) == 2
    for i in range(2):
        a, b = one[i], two[i]
        assert list(a.pop(records.FRAMES)) == list(b.pop(records.FRAMES)) and a == b
