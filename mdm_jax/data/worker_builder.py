"""The bases of builders that make their records in worker processes, and of those that
generate them from their index (the shapes data sets)."""
import itertools
import multiprocessing
import os

import tensorflow_datasets as tfds

# Items handed to the pool at a time, per process: enough that the workers are seldom idle
# at a batch's end, few enough to hold in memory (Pool.imap would queue every item at once).
ITEMS_PER_PROCESS = 64


class WorkerBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder with `num_processes` (default every core) and `_map`."""

    def __init__(self, *, num_processes=None, **kwargs):
        self._num_processes = num_processes or os.cpu_count() or 1
        super().__init__(**kwargs)

    def _map(self, make, items, chunksize, in_process=False):
        """make(item) for each item, in order; in worker processes unless there is one or
        in_process. Workers are spawned, not forked: the caller may have started JAX
        threads. Each takes seconds to start (it imports tfds), so a small job is quicker
        done in this process."""
        if self._num_processes == 1 or in_process:
            yield from map(make, items)
            return
        with multiprocessing.get_context("spawn").Pool(self._num_processes) as pool:
            for batch in itertools.batched(items, ITEMS_PER_PROCESS * self._num_processes):
                yield from pool.imap(make, batch, chunksize=chunksize)


def validation_size(num_examples):
    """A generated data set's validation split: the next num_examples // 50 (at least 1)."""
    return max(1, num_examples // 50)


class GeneratedBuilder(WorkerBuilder, skip_registration=True):
    """Records made from their index by `_generate_examples(indices)`: train holds indices
    0..num_examples-1 of the builder config, validation the validation_size next ones."""

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to download
        n = self.builder_config.num_examples
        return {"train": self._generate_examples(range(n)),
                "validation": self._generate_examples(range(n, n + validation_size(n)))}
