"""A source of random examples with every batch field, for benchmarks: nothing to build,
nothing to decode, so the pipeline's own overhead is what a benchmark of it measures.
"""
import numpy as np

from mdm_jax.data import counters

_POOL = 8  # distinct random images, reused: generating fresh ones would dominate the cost


class SyntheticSource:
    """Random-access source of finished examples; example i is a function of (seed, i).
    max_length: tokens a caption (the pipeline's TextInputs.max_length); 0 = no tokens."""

    def __init__(self, config, max_length):
        self._size = config.image_size
        self._length = max_length
        self._cfg = config.synthetic.to_dict()
        self._seed = config.seed
        self._images = None

    def __len__(self):
        return self._cfg["num_examples"]

    def __getitem__(self, index):
        if self._images is None:  # made lazily, in the process that reads
            rng = np.random.default_rng(self._seed)
            self._images = rng.uniform(-1, 1, (_POOL, self._size, self._size, 3)).astype(
                np.float32)
        rng = np.random.default_rng([self._seed, index])
        example = {
            "images": self._images[index % _POOL].copy(),
            "scale": np.float32(self._size),
            "labels": np.int32(rng.integers(self._cfg["num_classes"])),
            counters.FIELD: counters.zeros(),
        }
        if self._length:
            num_tokens = int(rng.integers(1, self._length + 1))
            example["tokens"] = np.zeros(self._length, np.int32)
            example["tokens"][:num_tokens] = rng.integers(2, self._cfg["vocab_size"],
                                                          num_tokens)
            example["token_mask"] = (np.arange(self._length) < num_tokens).astype(np.int32)
        return example

    def __getstate__(self):
        return {**self.__dict__, "_images": None}  # workers make their own pool
