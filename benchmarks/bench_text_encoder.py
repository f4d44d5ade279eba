"""Forward time and memory of a text encoder on one device; prints one JSON line per batch size.

  python -m benchmarks.bench_text_encoder --preset=flan-t5-xl --batch_sizes=32,64,128

Random weights of the preset's size (no checkpoint needed), bf16 by default, full-length
captions (the worst case: every token real). Times exclude compilation.
"""
import json
import time

import jax
import numpy as np
from absl import app, flags

from mdm_jax.models import text


def measure(config, batch_size, steps):
    """{'ms_per_batch', 'captions_per_s', 'param_bytes', 'peak_bytes'} of jitted `encode`."""
    module, params = text.load_text_encoder(config)
    tokens = np.random.default_rng(0).integers(
        2, 1000, (batch_size, config.max_length)).astype(np.int32)
    mask = np.ones_like(tokens)
    encode = jax.jit(text.encode, static_argnums=0)
    encode(module, params, tokens, mask).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        out = encode(module, params, tokens, mask)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / steps
    stats = jax.devices()[0].memory_stats() or {}
    return dict(ms_per_batch=1e3 * seconds, captions_per_s=batch_size / seconds,
                param_bytes=sum(x.nbytes for x in jax.tree_util.tree_leaves(params)),
                peak_bytes=stats.get("peak_bytes_in_use"))


def main(argv):
    del argv
    f = flags.FLAGS
    config = text.text_encoder_config(kind="t5", max_length=f.max_length, dtype=f.dtype,
                                      attention_impl=f.attention_impl)
    config.t5.preset = f.preset
    # Ascending, so that the device's peak memory so far is that of the current size.
    for batch_size in sorted(int(b) for b in f.batch_sizes):
        result = measure(config, batch_size, f.steps)
        print(json.dumps(dict(preset=f.preset, batch_size=batch_size,
                              max_length=f.max_length, dtype=f.dtype,
                              attention_impl=f.attention_impl,
                              device=jax.devices()[0].device_kind, **result)), flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("preset", "flan-t5-xl", "T5 size (text.t5.preset).")
    flags.DEFINE_list("batch_sizes", ["32", "64", "128"], "Captions per call.")
    flags.DEFINE_integer("max_length", 128, "Tokens per caption.")
    flags.DEFINE_string("dtype", "bfloat16", "Activations and weights.")
    flags.DEFINE_string("attention_impl", None, "None, 'xla' or 'cudnn'.")
    flags.DEFINE_integer("steps", 10, "Timed calls per batch size.")
    app.run(main)
