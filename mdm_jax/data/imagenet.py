"""ImageNet-1k (ILSVRC 2012) from the official archives, into tfds.

The manual directory holds the archives as distributed:
  ILSVRC2012_img_train.tar  one tar per class (n01440764.tar, ...) of JPEGs
  ILSVRC2012_img_val.tar    ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG
Labels are class indices 0..999 in sorted-WordNet-id order (tfds's imagenet2012 order);
validation labels come from the ground truth tfds ships (validation_labels.txt, one WordNet
id per validation image, in file-number order). Class names: `CLASS_NAMES[i]` is the
WordNet id and `class_descriptions()[i]` its synonyms ("tench, Tinca tinca").

Images are stored as found (records.py): the handful of CMYK JPEGs and the PNG saved
as .JPEG in the official train archive are converted and counted by the pipeline.
"""
import functools
import os
import tarfile

import tensorflow_datasets as tfds

from mdm_jax.data import records

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
_TFDS_LABELS = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012")
_DESCRIPTIONS = os.path.join(os.path.dirname(__file__), "imagenet_classes.tsv")


def _read_lines(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


CLASS_NAMES = tuple(_read_lines(os.path.join(_TFDS_LABELS, "labels.txt")))
_CLASS_INDEX = {wnid: i for i, wnid in enumerate(CLASS_NAMES)}


@functools.cache
def class_descriptions():
    """Human-readable names, by class index."""
    by_wnid = dict(line.split("\t", 1) for line in _read_lines(_DESCRIPTIONS))
    return tuple(by_wnid[wnid] for wnid in CLASS_NAMES)


@functools.cache
def _validation_labels():
    return _read_lines(os.path.join(_TFDS_LABELS, "validation_labels.txt"))


def _val_index(filename):
    """ILSVRC2012_val_00000042.JPEG -> 41."""
    return int(os.path.splitext(filename)[0].rsplit("_", 1)[1]) - 1


def _record(data, label):
    width, height = records.image_size_of(data)
    return records.record(data, width, height, label=label)


def read_train(path):
    """Yields (key, record) from the train archive, streaming (the archive is ~140 GB)."""
    with tarfile.open(path, "r|") as outer:
        for class_tar in outer:
            wnid = os.path.splitext(os.path.basename(class_tar.name))[0]
            label = _CLASS_INDEX[wnid]
            with tarfile.open(fileobj=outer.extractfile(class_tar), mode="r|") as inner:
                for image in inner:
                    if image.isfile():
                        name = os.path.basename(image.name)
                        yield name, _record(inner.extractfile(image).read(), label)


def read_validation(path):
    labels = _validation_labels()
    with tarfile.open(path, "r|") as archive:
        for image in archive:
            if image.isfile():
                name = os.path.basename(image.name)
                label = _CLASS_INDEX[labels[_val_index(name)]]
                yield name, _record(archive.extractfile(image).read(), label)


class MdmImagenet(tfds.core.GeneratorBasedBuilder):
    """ImageNet-1k train and validation, images as found in the official archives."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {TRAIN_ARCHIVE} and {VAL_ARCHIVE} from image-net.org into the manual "
        "directory (data.manual_dir).")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description="ImageNet-1k (ILSVRC 2012) train and validation.",
            features=records.features(caption=False, class_names=CLASS_NAMES))

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        paths = {split: os.path.join(manual_dir, name)
                 for split, name in (("train", TRAIN_ARCHIVE), ("validation", VAL_ARCHIVE))}
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"ImageNet archives not found: {', '.join(missing)}. Put {TRAIN_ARCHIVE} and "
                f"{VAL_ARCHIVE} in the manual directory (set data.manual_dir).")
        return {"train": self._generate_examples(read_train, paths["train"]),
                "validation": self._generate_examples(read_validation, paths["validation"])}

    def _generate_examples(self, read, path):
        yield from read(path)


def make_builder(data_dir):
    return MdmImagenet(data_dir=os.path.expanduser(data_dir), file_format="array_record")


def build(data_dir, manual_dir):
    """Converts the archives in manual_dir (if not already done); returns the data set folder."""
    builder = make_builder(data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir)))
    return builder.data_dir
