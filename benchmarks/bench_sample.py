"""Sampling benchmark: seconds per image for each (steps, guidance), as JSON lines.

    python -m benchmarks.bench_sample --config=configs/cc12m_256.py --batch_size=8 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl
    python -m benchmarks.bench_sample --config=configs/cc12m_1024.py --batch_size=4 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl

Samples the last stage of the config with random params (float32, as trained; the model
computes in config.model.dtype) and random tokens or class labels, so the numbers are the
model's and the sampler's. The text encoder runs once per batch outside the sampling loop,
as in `python -m mdm_jax.sample`, and is timed apart: `seconds_per_image` is the loop,
`seconds_per_image_with_text` adds the encoding. `peak_memory_gib` is the process's peak
so far (it cannot be reset), so guided lines also bound the unguided ones before them.
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.timing import timed
from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.models import build_model
from mdm_jax.models import text as text_lib
from mdm_jax.parallel import sharding, xla_flags
from mdm_jax.runs.stages import plan_stages, sharded_fresh_params, top_level_shape
from mdm_jax.sampling import sampler as samples

config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
flags.DEFINE_integer("batch_size", 8, "Images per sampling call.")
flags.DEFINE_list("steps_list", ["50", "250"], "Sampling steps to time.")
flags.DEFINE_list("guidance_list", ["1", "7"], "Guidance scales to time (1: none).")
flags.DEFINE_enum("sampler", "ddpm", samples.SAMPLERS, "Sampler (ddpm: the reference's).")
flags.DEFINE_bool("cast_kernels", True, "Cast kernels to the compute dtype before the loop "
                  "(--nocast_kernels: the old path, as a baseline in the same call).")
flags.DEFINE_bool("condition_once", True, "Process the text and labels (and each attention "
                  "layer's text keys and values) once, before the loop "
                  "(--nocondition_once: at every step, the old path).")
flags.DEFINE_integer("repeats", 3, "Timed calls per setting, after one warm-up call.")
flags.DEFINE_string("profile_dir", "", "Write a profiler trace of one call of each setting "
                    "and its compiled program's text into DIR/steps_S_guidance_G "
                    "(read them with benchmarks/trace_summary.py).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    xla_flags.apply_defaults()  # as the sampling CLI's process has them
    config = FLAGS.config
    stage = plan_stages(config)[-1]
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    device = jax.devices()[0]
    text = TextConditioning.create(config, mesh, rules)
    _, params = sharded_fresh_params(stage, text, 0, mesh, rules)
    model = build_model(stage.model_config)
    size, batch_size = stage.image_size, FLAGS.batch_size
    shape = top_level_shape(stage, batch_size)
    rng = np.random.default_rng(0)

    def put(x):
        return jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))

    # Conditioning as the sampling CLI builds it: encoded prompts (and, when guided, the
    # negative prompt's encoding) for text models, labels for class-conditional ones.
    labels = tokens = mask = None
    if config.text.kind != "none":
        length = config.text.max_length
        tokens = put(rng.integers(1, 1000, (batch_size, length)).astype(np.int32))
        mask = put(np.ones((batch_size, length), np.int32))
        encode = jax.jit(lambda p, t, m: text_lib.encode(text.module, p, t, m)
                         .astype(np.float32))
        # A trainable encoder's params are part of the model's params.
        text_params = params["text"] if text.trainable else text.frozen_params
    elif stage.model_config.num_classes:
        labels = put(rng.integers(0, stage.model_config.num_classes, batch_size)
                     .astype(np.int32))

    for steps in map(int, FLAGS.steps_list):
        for guidance in map(float, FLAGS.guidance_list):
            if guidance != 1 and labels is None and tokens is None:
                raise ValueError("Guidance needs a conditional model: pass --guidance_list=1.")
            lm = uncond_lm = uncond_mask = None
            text_s = 0.0
            if tokens is not None:
                # Random tokens cost what prompts do (the encoder sees padded tokens); a
                # guided batch also encodes the negative prompt.
                def encode_all():
                    cond = encode(text_params, tokens, mask)
                    return cond, (encode(text_params, tokens, mask) if guidance != 1 else None)
                text_s = timed(encode_all, FLAGS.repeats)
                lm, uncond_lm = encode_all()
                uncond_mask = None if uncond_lm is None else mask
            run = samples.make_sampler(model, stage.diffusion, stage.scales, shape,
                                       sampler=FLAGS.sampler, num_steps=steps, eta=0.0,
                                       guidance_scale=guidance, mesh=mesh,
                                       cast_kernels=FLAGS.cast_kernels,
                                       condition_once=FLAGS.condition_once)
            args = (params["unet"], jax.random.key(0), labels, lm, mask, uncond_lm, uncond_mask)
            start = time.perf_counter()
            compiled = run.lower(*args).compile()
            compile_s = time.perf_counter() - start
            seconds = timed(lambda: compiled(*args), FLAGS.repeats)
            stats = device.memory_stats() or {}
            print(json.dumps({
                "benchmark": "sample", "device": device.device_kind, "chips": jax.device_count(),
                "image_size": size, "levels": len(stage.scales), "batch": batch_size,
                "steps": steps, "guidance": guidance, "sampler": FLAGS.sampler,
                "model_dtype": config.model.dtype, "text": config.text.kind,
                "cast_kernels": FLAGS.cast_kernels, "condition_once": FLAGS.condition_once,
                "seconds_per_batch": seconds, "seconds_per_image": seconds / batch_size,
                "text_encoder_s": text_s,
                "seconds_per_image_with_text": (seconds + text_s) / batch_size,
                "compile_s": compile_s,
                "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30}), flush=True)
            if FLAGS.profile_dir:
                trace_dir = os.path.join(FLAGS.profile_dir, f"steps_{steps}_guidance_{guidance:g}")
                os.makedirs(trace_dir, exist_ok=True)
                with open(os.path.join(trace_dir, "sample.hlo.txt"), "w") as f:
                    f.write(compiled.as_text())
                with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                    jax.block_until_ready(compiled(*args))


if __name__ == "__main__":
    app.run(main)
