"""The imagenet builder on a miniature of the official archives: a train tar of per-class
tars and a flat validation tar, with the official archive's oddities (a CMYK JPEG, a PNG
named .JPEG)."""
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import config as data_config
from mdm_jax.data import imagenet, pipeline, records
from mdm_jax.data.transforms import TextInputs
from mdm_jax.testing import source_files as sample_files

CLASSES = ("n01440764", "n01443537", "n15075141")  # indices 0, 1 and 999


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def jpeg(seed, size=(40, 30)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return sample_files.encode(pixels, "JPEG", quality=90)


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    manual = tmp_path_factory.mktemp("imagenet")
    with tarfile.open(manual / imagenet.TRAIN_ARCHIVE, "w") as train:
        for c, wnid in enumerate(CLASSES):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(2):
                    data = jpeg(10 * c + i)
                    if (c, i) == (1, 1):
                        data = sample_files.encode(Image.new("CMYK", (30, 30)), "JPEG")
                    if (c, i) == (2, 1):
                        data = sample_files.encode(Image.new("RGB", (30, 30)), "PNG")
                    add(class_tar, f"{wnid}_{1000 + i}.JPEG", data)
            add(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(manual / imagenet.VAL_ARCHIVE, "w") as val:
        for n in range(1, 4):
            add(val, f"ILSVRC2012_val_{n:08d}.JPEG", jpeg(100 + n))
    return manual


@pytest.fixture(scope="module")
def config(manual_dir, tmp_path_factory):
    cfg = data_config.get_data_config()
    cfg.update(dict(dataset="imagenet", data_dir=str(tmp_path_factory.mktemp("tfds")),
                    manual_dir=str(manual_dir), image_size=16, label_dropout=0.0,
                    num_epochs=1, shuffle=False))
    imagenet.build(cfg.data_dir, cfg.manual_dir)
    return cfg


def test_builds_train_and_validation_with_class_indices(config):
    builder = imagenet.make_builder(config.data_dir)
    train = builder.as_data_source("train")
    labels = sorted(train[i][records.LABEL] for i in range(len(train)))
    assert labels == [0, 0, 1, 1, 999, 999]
    # Validation labels are the official ground truth for images 1..3, by file number.
    truth = open(imagenet._TFDS_LABELS + "/validation_labels.txt").read().split()[:3]
    validation = builder.as_data_source("validation")
    got = {imagenet.CLASS_NAMES[validation[i][records.LABEL]] for i in range(len(validation))}
    assert len(validation) == 3 and got == set(truth)
    assert records.CAPTION not in builder.info.features
    # Stored as found: the original size comes from the header.
    assert {(train[i][records.WIDTH], train[i][records.HEIGHT]) for i in range(6)} >= {(40, 30)}


def test_class_names_are_the_wordnet_synsets():
    assert len(imagenet.CLASS_NAMES) == 1000 == len(set(imagenet.CLASS_NAMES))
    assert imagenet.CLASS_NAMES[0] == "n01440764"
    assert imagenet.class_descriptions()[0] == "tench, Tinca tinca"
    assert imagenet.class_descriptions()[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_pipeline_yields_labels_and_counts_the_odd_images(config):
    batches = list(pipeline.make_iterator(config, global_batch_size=2, process_index=0,
                                          process_count=1))
    assert len(batches) == 3
    assert set(batches[0]) == {"images", "scale", "labels", "counters"}
    labels = np.concatenate([b["labels"] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 999, 999]
    assert batches[-1]["counters"]["converted_cmyk"] == 1
    assert sum(batches[-1]["counters"].values()) == 1  # the PNG named .JPEG just decodes
    assert batches[0]["images"].shape == (2, 16, 16, 3)
    assert sorted(np.concatenate([b["scale"] for b in batches]).tolist()) == [30.0] * 6


def test_label_dropout_gives_minus_one(config):
    cfg = config.copy_and_resolve_references()
    cfg.label_dropout = 1.0
    batch = next(pipeline.make_iterator(cfg, global_batch_size=6, process_index=0,
                                        process_count=1))
    assert (batch["labels"] == -1).all()


def test_text_inputs_on_a_data_set_without_captions_name_the_fix(config):
    with pytest.raises(ValueError, match="no captions.*text.kind='none'"):
        pipeline.make_iterator(config, global_batch_size=2, text=TextInputs(),
                               process_index=0, process_count=1)
