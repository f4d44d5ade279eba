"""Input pipeline throughput: images/s of make_iterator by data set, image size and number
of worker processes, one JSON line per setting.

    python -m benchmarks.bench_data                        # image_text, shapes, synthetic
    python -m benchmarks.bench_data --datasets=image_text --image_sizes=256 --workers=0,8,16

It writes its own data under --work_dir first (kept for the next run): image_text from
JPEG photos of --source_size in webdataset shards (CC12M-like originals, as downloaded
without resizing), shapes at the largest image size. Timing starts after --warmup
batches, so worker start-up is not counted. Batches carry tokens (TextInputs of 128
tokens; image_text's tokenizer is trained on its captions), as a text-to-image run's do.
"""
import json
import os
import tempfile
import time

from absl import app, flags

from mdm_jax.data import config as data_config
from mdm_jax.data import image_text, pipeline, shapes, sources, tokenizer
from mdm_jax.data.transforms import TextInputs
from mdm_jax.testing import source_files as sample_files

_DATASETS = flags.DEFINE_list("datasets", ["image_text", "shapes", "synthetic"],
                              "Data sets to measure.")
_SIZES = flags.DEFINE_list("image_sizes", ["64", "256"], "Output image sizes.")
_WORKERS = flags.DEFINE_list("workers", None,
                             "Worker process counts (default: 0, 1, 2, 4, ... up to cores).")
_READ_THREADS = flags.DEFINE_integer("read_threads", 2, "data.read_threads.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Per-host batch size.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Batches before timing starts.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Time each setting for about this long.")
_WORK_DIR = flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(),
                                                         "mdm_bench_data"),
                                "Where the benchmark's data sets are written (and reused).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Images in each data set.")
_SOURCE_SIZE = flags.DEFINE_string("source_size", "640x480",
                                   "image_text originals, WIDTHxHEIGHT.")


def prepare(dataset, largest):
    """(data config, TextInputs) of `dataset`, its data built if needed."""
    config = data_config.get_data_config()
    config.dataset = dataset
    config.data_dir = os.path.join(_WORK_DIR.value, "tfds")
    config.read_threads = _READ_THREADS.value
    if dataset == "image_text":
        width, height = map(int, _SOURCE_SIZE.value.split("x"))
        config.manual_dir = os.path.join(_WORK_DIR.value, f"photos_{width}x{height}")
        config.image_text.name = f"photos_{width}x{height}_{_NUM_IMAGES.value}"
        if not os.path.isdir(config.manual_dir):
            sample_files.write_photo_shards(config.manual_dir, num_shards=10,
                                            per_shard=-(-_NUM_IMAGES.value // 10),
                                            sizes=((width, height), (height, width)))
        image_text.build(config.data_dir, config.manual_dir, name=config.image_text.name)
        # Captions need a tokenizer: one trained on this data's captions.
        path = os.path.join(_WORK_DIR.value, f"{config.image_text.name}.model")
        if not os.path.exists(path):
            tokenizer.train(sources.captions(config, 100_000), path, 500)
        return config, TextInputs(tokenizer=path)
    if dataset == "shapes":
        config.shapes.update(dict(image_size=largest, num_examples=_NUM_IMAGES.value))
        shapes.build(config.data_dir, largest, _NUM_IMAGES.value)
    return config, TextInputs()  # shapes: its own tokenizer; synthetic: random tokens


def measure(config, text):
    iterator = pipeline.make_iterator(config, global_batch_size=_BATCH.value, text=text,
                                      process_index=0, process_count=1)
    try:
        for _ in range(_WARMUP.value):
            next(iterator)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < _SECONDS.value:
            next(iterator)
            count += 1
        return count * _BATCH.value / (time.perf_counter() - start)
    finally:
        iterator.close()


def main(argv):
    del argv
    cores = os.cpu_count()
    workers = [int(w) for w in _WORKERS.value] if _WORKERS.value else [0] + [
        2 ** i for i in range(cores.bit_length()) if 2 ** i <= cores]
    sizes = [int(s) for s in _SIZES.value]
    for dataset in _DATASETS.value:
        config, text = prepare(dataset, max(sizes))
        for size in sizes:
            config.image_size = size
            for count in workers:
                config.num_workers = count
                print(json.dumps({
                    "dataset": dataset, "image_size": size, "workers": count,
                    "read_threads": config.read_threads, "batch_size": _BATCH.value,
                    "images_per_s": round(measure(config, text), 1), "host_cpu_count": cores,
                    "source": _SOURCE_SIZE.value if dataset == "image_text" else None}),
                    flush=True)


if __name__ == "__main__":
    app.run(main)
