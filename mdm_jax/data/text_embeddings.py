"""Precomputed text embeddings on disk: what mdm_jax.conditioning.precompute writes
(`python -m mdm_jax.precompute_text`) and the pipeline reads (TextInputs.embeddings_dir).

A directory holds
  metadata.json          format, num_examples, width, max_length, dtype, files, text_config
  embeddings.array_record-00000-of-00004 ...
                         the records of examples 0..num_examples-1 in order: reading the
                         files in the listed order, example i is record i.
  unconditional.array_record
                         one record: the embedding of the empty caption "", which caption
                         dropout substitutes (the same input the sampler's empty prompt gives).

A record is a 12-byte little-endian header (int64 example index, int32 number n of real
tokens, EOS included) followed by the [n, width] embedding, row-major, in `dtype`. Padded
positions are zero by construction, so they are not stored: the reader pads to
max_length and the mask is 1 on the first n positions. metadata.json is written last, so
a directory without it is incomplete.
"""
import json
import os
import struct

import jax.numpy as jnp
import numpy as np

FORMAT = "mdm_jax.text_embeddings.v1"
METADATA = "metadata.json"
UNCONDITIONAL = "unconditional.array_record"
STORAGE_DTYPES = ("bfloat16", "float16", "float32")
_HEADER = struct.Struct("<qi")
# One record per chunk: fast random access, which a shuffled grain pipeline needs.
_WRITER_OPTIONS = "group_size:1"


def shard_name(shard, num_shards):
    return f"embeddings.array_record-{shard:05d}-of-{num_shards:05d}"


def encode_record(index, embedding):
    """Bytes of one record; `embedding` [n, width] holds only the real tokens."""
    return _HEADER.pack(index, embedding.shape[0]) + np.ascontiguousarray(embedding).tobytes()


def decode_record(record, metadata):
    """(index, embedding [max_length, width] padded with zeros, mask [max_length] int32)."""
    index, n = _HEADER.unpack_from(record)
    width, max_length = metadata["width"], metadata["max_length"]
    dtype = jnp.dtype(metadata["dtype"])
    embedding = np.zeros((max_length, width), dtype)
    embedding[:n] = np.frombuffer(record, dtype, count=n * width,
                                  offset=_HEADER.size).reshape(n, width)
    mask = np.zeros(max_length, np.int32)
    mask[:n] = 1
    return index, embedding, mask


def read_metadata(directory):
    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {METADATA} in {directory!r}: not a finished precomputed-embeddings directory. "
            "Make one with `python -m mdm_jax.precompute_text`.")
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} has format {metadata.get('format')!r}; this version reads "
                         f"{FORMAT!r}. Recompute the embeddings.")
    return metadata


def record_paths(directory, metadata=None):
    """The embedding files in example order."""
    metadata = read_metadata(directory) if metadata is None else metadata
    return [os.path.join(directory, name) for name in metadata["files"]]


def data_source(directory):
    """A grain random-access source of the records: source[i] is example i's record."""
    import grain  # only readers need it
    return grain.sources.ArrayRecordDataSource(record_paths(directory))


def unconditional(directory):
    """(embedding [max_length, width], mask [max_length]) of the empty caption."""
    from array_record.python.array_record_module import ArrayRecordReader
    metadata = read_metadata(directory)
    reader = ArrayRecordReader(os.path.join(directory, UNCONDITIONAL))
    try:
        record = reader.read([0])[0]
    finally:
        reader.close()
    return decode_record(record, metadata)[1:]


class Writer:
    """Writes num_examples embeddings, given in index order, into num_shards files.

    Example i goes to shard i * num_shards // num_examples, so that the files read in
    order list the examples in order. Files are written under temporary names and
    renamed on `close`, which writes metadata.json last.
    """

    def __init__(self, directory, num_examples, width, max_length, dtype, num_shards,
                 text_config):
        from array_record.python.array_record_module import ArrayRecordWriter
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"Storage dtype {dtype!r}; use one of {STORAGE_DTYPES}.")
        if not 1 <= num_shards <= max(num_examples, 1):
            raise ValueError(f"num_shards={num_shards} must be between 1 and the number of "
                             f"examples ({num_examples}).")
        if os.path.exists(os.path.join(directory, METADATA)):
            raise FileExistsError(f"{directory!r} already holds embeddings ({METADATA}); "
                                  "choose a new output directory or delete it.")
        os.makedirs(directory, exist_ok=True)
        self._make_writer = lambda path: ArrayRecordWriter(path, _WRITER_OPTIONS)
        self.directory = directory
        self.metadata = dict(
            format=FORMAT, num_examples=num_examples, width=width, max_length=max_length,
            dtype=dtype, files=[shard_name(s, num_shards) for s in range(num_shards)],
            text_config=text_config)
        self._dtype = jnp.dtype(dtype)
        self._writers = [self._make_writer(self._temporary(n)) for n in self.metadata["files"]]
        self._next_index = 0

    def _temporary(self, name):
        return os.path.join(self.directory, name + ".tmp")

    def write(self, index, embedding):
        """`embedding` [n, width]: the real tokens of example `index` (the next one)."""
        if index != self._next_index:
            raise ValueError(f"Embeddings must be written in index order: got {index}, "
                             f"expected {self._next_index}.")
        num_examples, num_shards = self.metadata["num_examples"], len(self._writers)
        self._writers[index * num_shards // num_examples].write(
            encode_record(index, embedding.astype(self._dtype)))
        self._next_index += 1

    def close(self, unconditional_embedding):
        """Finishes the files; `unconditional_embedding` [n, width] is that of ""."""
        if self._next_index != self.metadata["num_examples"]:
            raise ValueError(f"Wrote {self._next_index} of {self.metadata['num_examples']} "
                             "embeddings.")
        writer = self._make_writer(self._temporary(UNCONDITIONAL))
        writer.write(encode_record(-1, unconditional_embedding.astype(self._dtype)))
        for w in self._writers + [writer]:
            w.close()
        for name in self.metadata["files"] + [UNCONDITIONAL]:
            os.replace(self._temporary(name), os.path.join(self.directory, name))
        temporary = self._temporary(METADATA)
        with open(temporary, "w") as f:
            json.dump(self.metadata, f, indent=2)
        os.replace(temporary, os.path.join(self.directory, METADATA))
