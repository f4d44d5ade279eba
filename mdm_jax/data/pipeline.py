"""The grain input pipeline: per-host batches of numpy arrays, checkpointable exactly.

    records -> seeded shuffle, a new order each epoch -> repeat
    -> ProcessRecord: decode (an image, or a clip's first data.num_frames frames), crop,
       flip, scale, tokenise (as the caller's TextInputs says), dropout (seeded per record)
    -> ProcessSlice: this process's rows of each global batch (the same global batches
       whatever the number of processes)
    -> SkipBadRecords: drop skipped records, their counts carried by a kept example
    -> batch (per-host size, remainder dropped) -> worker processes (mp_prefetch)
    -> CountTotals: running totals of the bad-record counters, in each batch's "counters"

Every stage's position is in `iterator.get_state()`, which `grain.checkpoint.CheckpointSave`
/ `CheckpointRestore` write into an Orbax CheckpointManager item (one file per process):
a restored iterator continues with exactly the batches an uninterrupted one would give,
counters included. The batch contract is in docs/data.md.
"""
import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdm_jax.data import config as config_lib
from mdm_jax.data import counters, sources, text_embeddings, transforms

COUNTERS = "counters"
# SkipBadRecords gives up (with an error naming the counts) after this many skipped
# records in a row: then the data set, not a record, is broken, and waiting forever helps
# nobody.
MAX_CONSECUTIVE_SKIPS = 10_000


class SkipBadRecords(grain.IterDataset):
    """Drops skipped records (those without images); their counts ride on the kept
    example before them (or, for those before the first, on the first), so that even
    the last records of a finite run are counted."""

    def __iter__(self):
        return _SkipBadRecordsIterator(self._parent.__iter__())


class _SkipBadRecordsIterator(grain.DatasetIterator):

    def __init__(self, parent):
        super().__init__(parent)
        self._pending = counters.zeros()  # counts of skipped records not yet attached
        # The next kept example, read ahead, and the parent's state just before it: the
        # state to restore, so that a restored iterator reads that example again.
        self._next, self._next_state = None, None

    def _read_kept(self):
        for _ in range(MAX_CONSECUTIVE_SKIPS):
            state = self._parent.get_state()
            try:
                example = next(self._parent)
            except StopIteration:
                return None, None
            if "images" in example:
                return example, state
            self._pending += example[counters.FIELD]
        raise RuntimeError(
            f"The last {MAX_CONSECUTIVE_SKIPS} records were all skipped "
            f"({counters.as_dict(self._pending, {})}): the data set or the data config is "
            "broken, not a record (check data.dataset, data.split and text.tokenizer).")

    def __next__(self):
        if self._next is None:
            self._next, self._next_state = self._read_kept()
            if self._next is None:
                raise StopIteration
        example = self._next
        self._next, self._next_state = self._read_kept()  # counts the skips up to it
        example[counters.FIELD] = example[counters.FIELD] + self._pending
        self._pending = counters.zeros()
        return example

    def get_state(self):
        # Between calls every skip read so far is attached: only the position matters.
        return {"parent": self._parent.get_state() if self._next is None
                else self._next_state}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._next, self._next_state = None, None
        self._pending = counters.zeros()


class CountTotals(grain.IterDataset):
    """Sums each batch's per-example counts into running totals (kept in the iterator
    state, so they survive restores) and puts them in the batch as a dict."""

    def __init__(self, parent, build_counters):
        super().__init__(parent)
        self._build_counters = dict(build_counters)

    def __iter__(self):
        return _CountTotalsIterator(self._parent.__iter__(), self._build_counters)


class _CountTotalsIterator(grain.DatasetIterator):

    def __init__(self, parent, build_counters):
        super().__init__(parent)
        self._build_counters = build_counters
        self._totals = np.zeros(len(counters.READ_COUNTERS), np.int64)

    def __next__(self):
        batch = dict(next(self._parent))
        self._totals += batch.pop(counters.FIELD).sum(axis=0)
        batch[COUNTERS] = counters.as_dict(self._totals, self._build_counters)
        return batch

    def get_state(self):
        return {"parent": self._parent.get_state(), "totals": self._totals.tolist()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._totals = np.asarray(state["totals"], np.int64)


class WithEmbeddings:
    """A record source joined with precomputed text embeddings, example i with record i."""

    def __init__(self, source, directory):
        self._source = source
        self._embeddings = text_embeddings.data_source(directory)
        if len(self._embeddings) != len(source):
            raise ValueError(f"{directory} holds {len(self._embeddings)} embeddings but the "
                             f"data split has {len(source)} records: precompute them for "
                             "this data set and split.")

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        return {**self._source[index], transforms.EMBEDDING: self._embeddings[index]}


class ProcessSlice(grain.MapDataset):
    """This process's rows of every global batch of `parent` (which is in global order).

    Local element k is global element (k // b) * B + p * b + k % b, with b the per-host and
    B the global batch: the processes together read each global batch exactly once, in
    order, so a run's batches don't depend on how many processes share it.
    """

    def __init__(self, parent, process_index, process_count, per_host):
        super().__init__(parent)
        self._p, self._per_host = process_index, per_host
        self._global = per_host * process_count
        self._length = len(parent) // self._global * per_host

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._per_host)
        return self._parent[step * self._global + self._p * self._per_host + row]


def make_dataset(data_config, *, global_batch_size, text=None, seed=None, process_index=None,
                 process_count=None):
    """The grain IterDataset behind make_iterator (for pipelines that extend it)."""
    config_lib.validate(data_config)
    config_lib.check_text_inputs(data_config, text)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be divisible by the "
                         f"number of processes ({process_count}).")
    per_host = global_batch_size // process_count
    seed = data_config.seed if seed is None else seed
    source, info = sources.open_source(data_config, text)
    if text is not None and text.embeddings_dir:
        source = WithEmbeddings(source, text.embeddings_dir)
    ds = grain.MapDataset.source(source)
    if len(ds) < global_batch_size:
        raise ValueError(
            f"{data_config.dataset}/{data_config.split} has {len(ds)} records, fewer than "
            f"one global batch ({global_batch_size}): lower the batch size or use a larger "
            "data set.")
    # Shuffle, repeat and per-record randomness happen in global order with the same seed
    # in every process (lazily: only this process's records are read and decoded).
    if data_config.shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(data_config.num_epochs)
    if data_config.dataset != "synthetic":  # synthetic records are finished examples
        spec = transforms.ExampleSpec.from_config(data_config, info, text)
        ds = ds.random_map(transforms.ProcessRecord(spec), seed=seed)
    ds = ProcessSlice(ds, process_index, process_count, per_host)
    ds = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=data_config.read_threads,
        prefetch_buffer_size=max(per_host, data_config.read_threads)))
    ds = SkipBadRecords(ds).batch(per_host, drop_remainder=True)
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.num_workers,
        per_worker_buffer_size=data_config.prefetch_buffer))
    return CountTotals(ds, info.build_counters)


def make_iterator(data_config, *, global_batch_size, text=None, seed=None, process_index=None,
                  process_count=None):
    """A grain DatasetIterator of this process's batches (dicts of numpy arrays, leading
    dimension global_batch_size / process_count), with get_state()/set_state().

    text: a transforms.TextInputs (the tokenizer and caption length, or precomputed
    embeddings, from the training config's text section) for batches with tokens and
    token_mask (or text_embeddings and token_mask); None for batches without text, whose
    captions are then not even decoded. seed: shuffle and augmentation seed (default
    data_config.seed). process_index and process_count default to JAX's. Call `.close()`
    when done to stop worker processes.
    """
    return iter(make_dataset(data_config, global_batch_size=global_batch_size, text=text,
                             seed=seed, process_index=process_index,
                             process_count=process_count))


def model_inputs(batch):
    """The batch without its counters: what goes to the devices."""
    return {k: v for k, v in batch.items() if k != COUNTERS}


def to_global_arrays(batch, mesh, partition_spec):
    """Per-host numpy batch -> global jax.Arrays, the leading (batch) dimension sharded
    as the first entry of partition_spec says (the spec is cut to each field's rank)."""
    def put(x):
        spec = PartitionSpec(*tuple(partition_spec)[:x.ndim])
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)
    return {k: put(np.asarray(v)) for k, v in batch.items()}
