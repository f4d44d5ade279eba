"""Train-step benchmark: step time, images/s, TFLOP/s, MFU and peak memory, as JSON lines.

    python -m benchmarks.bench_train --config=configs/cc12m_1024.py --batch_size=4 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl
    python -m benchmarks.bench_train --config=configs/cc12m_64.py --batch_size=32 \
        --text=features --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl

Runs the last stage of the config on random images (no data pipeline, so the numbers are
the model's). `--text=encoder` (default): random tokens through the config's text
encoder inside the step, and the encoder timed alone for its share of the step.
`--text=features`: random features of the encoder's width in the batch instead, as the
reference trains on precomputed features. The line also says how long the start took:
the imports (the process start to main), creating the sharded state, compiling the
step, and the process start to the first step's end (a second process with the same
--compile_cache_dir shows a warm start).
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.timing import seconds_since_process_start, timed
from mdm_jax import diffusion
from mdm_jax.conditioning.text import TextConditioning, precomputed_text
from mdm_jax.models import build_model
from mdm_jax.models import text as text_lib
from mdm_jax.models.flops import parameter_count, training_flops_per_example
from mdm_jax.parallel import distributed, sharding
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.stages import fresh_params, plan_stages, top_level_shape
from mdm_jax.training import metrics
from mdm_jax.training.ahead import CompileAhead
from mdm_jax.training.loop import use_compile_cache
from mdm_jax.training.step import make_train_step

config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
flags.DEFINE_integer("batch_size", None, "Global batch (default: the last stage's).")
flags.DEFINE_integer("steps", 10, "Timed steps, after 2 warm-up steps.")
flags.DEFINE_enum("text", "encoder", ["encoder", "features"],
                  "Text in the step: the config's encoder, or random features of its width.")
flags.DEFINE_integer("gradient_accumulation", 1, "Micro-batches per step.")
flags.DEFINE_string("profile_dir", "", "Write a profiler trace of 3 steps and the "
                    "compiled step's text there (benchmarks/trace_summary.py reads them).")
flags.DEFINE_string("compile_cache_dir", "", "Persistent compilation cache ('': none).")
flags.DEFINE_bool("lower_only", False, "Only trace and lower the step, print how long that "
                  "took, and stop (the Python side of a start, on any host).")
flags.DEFINE_bool("compile_ahead", True, "Compile the step while the state is made, as the "
                  "trainer does (--nocompile_ahead: one after the other).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    imports_s = seconds_since_process_start()
    distributed.initialize_from_flags()
    config = FLAGS.config
    stage = plan_stages(config)[-1]
    batch_size = FLAGS.batch_size or stage.config.global_batch_size
    use_compile_cache(FLAGS.compile_cache_dir)
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    device = jax.local_devices()[0]
    features = FLAGS.text == "features" and config.text.kind != "none"
    # Features in the batch: no encoder to build (its width is the model's).
    text = TextConditioning(config.text) if features else TextConditioning.create(
        config, mesh, rules)
    optimizer = state_lib.make_optimizer(config.optimizer, 1e-5, 10)
    rng = np.random.default_rng(0)
    size, length = stage.image_size, config.text.max_length
    host = {"images": rng.uniform(-1, 1, top_level_shape(stage, batch_size)).astype(np.float32),
            "scale": np.full((batch_size,), float(size), np.float32)}
    if config.text.kind != "none":
        host["token_mask"] = np.ones((batch_size, length), np.int32)
        if features:
            width = stage.model_config.conditioning_feature_dim
            host["text_embeddings"] = rng.standard_normal(
                (batch_size, length, width)).astype(np.float32)
        else:
            host["tokens"] = rng.integers(1, 1000, (batch_size, length)).astype(np.int32)
    if stage.model_config.num_classes:
        host["labels"] = rng.integers(0, stage.model_config.num_classes, batch_size)
    # Every process makes the same global batch and keeps its own devices' rows.
    batch = {k: jax.make_array_from_callback(v.shape, sharding.batch_sharding(mesh, v.ndim),
                                             lambda index, v=v: v[index])
             for k, v in host.items()}
    # The state as the trainer makes a fresh one: its shapes and shardings first.
    abstract = jax.eval_shape(lambda: fresh_params(stage, text, 0))
    target = sharding.abstract_with_shardings(
        lambda p: state_lib.state_from_params(p, optimizer), mesh, rules, abstract)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, target)
    text_fn = precomputed_text if features else text.text_fn()
    step = jax.jit(make_train_step(build_model(stage.model_config), stage.diffusion,
                                   stage.scales, optimizer, lambda s: 1e-5, config.ema_decay,
                                   text_fn=text_fn,
                                   gradient_accumulation_steps=FLAGS.gradient_accumulation,
                                   batch_shards=sharding.batch_shards(mesh)),
                   donate_argnums=0, out_shardings=(shardings, sharding.replicated(mesh)))
    args = (batch, jax.random.key(0), text.frozen_params)
    if FLAGS.lower_only:
        start = time.perf_counter()
        lowered = step.lower(target, *args)
        print(json.dumps({"benchmark": "train_step_lower", "device": device.device_kind,
                          "stage": stage.name, "global_batch": batch_size,
                          "trace_and_lower_s": time.perf_counter() - start,
                          "stablehlo_mb": len(lowered.as_text()) / 1e6}), flush=True)
        return
    if FLAGS.compile_ahead:  # as the trainer: the step compiles while the state is made
        ahead = CompileAhead(step, target, *args)
        lower_s = ahead.lower_s
    state_start = time.perf_counter()
    params = sharding.create_leafwise(abstract, mesh, rules, 0)
    state, _ = state_lib.create_state(abstract, params, params, optimizer, mesh, rules)
    state = jax.block_until_ready(state)
    state_s = time.perf_counter() - state_start
    if FLAGS.compile_ahead:
        compile_s = ahead.wait()
    else:
        start = time.perf_counter()
        lowered = step.lower(state, *args)
        lower_s = time.perf_counter() - start
        step = lowered.compile()
        compile_s = time.perf_counter() - start - lower_s
    holder = {"state": state}

    def one_step():
        holder["state"], m = step(holder["state"], *args)
        return m["loss"]

    first_loss = float(jax.device_get(one_step()))
    first_step_s = seconds_since_process_start()
    seconds = timed(one_step, FLAGS.steps, warmup=1)
    # Under a mixed ratio, each level's FLOPs on the rows it runs on only.
    flops = training_flops_per_example(stage.model_config, size, length, level_rows=(
        diffusion.level_batch_sizes(stage.diffusion.mixed_ratio, batch_size, len(stage.scales),
                                    sharding.batch_shards(mesh) * FLAGS.gradient_accumulation)))
    per_chip = batch_size / seconds / jax.device_count()
    peak = metrics.peak_flops_per_chip(device)
    stats = device.memory_stats() or {}
    result = {
        "benchmark": "train_step", "device": device.device_kind, "chips": jax.device_count(),
        "stage": stage.name, "image_size": size, "global_batch": batch_size,
        "gradient_accumulation": FLAGS.gradient_accumulation,
        "model_dtype": config.model.dtype,
        "text": f"{config.text.kind} {'features' if features else 'encoder'}",
        "imports_s": imports_s, "state_s": state_s, "trace_and_lower_s": lower_s,
        "compile_s": compile_s, "compile_ahead": FLAGS.compile_ahead,
        "process_to_first_step_s": first_step_s,
        "unet_params_m": parameter_count(holder["state"].params["unet"]) / 1e6,
        "processes": jax.process_count(), "first_loss": first_loss,
        "step_s": seconds, "images_per_s_per_chip": per_chip,
        "model_tflops_per_s_per_chip": per_chip * flops / 1e12,
        "mfu": per_chip * flops / peak if peak else None,
        "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30}
    if not features and text.frozen_params is not None:
        encode = jax.jit(lambda p, t, m: text_lib.encode(text.module, p, t, m))
        tokens, mask = batch["tokens"], batch["token_mask"]
        encoder_s = timed(lambda: encode(text.frozen_params, tokens, mask), FLAGS.steps,
                          warmup=2)
        result.update(text_params_m=parameter_count(text.frozen_params) / 1e6,
                      text_encoder_s=encoder_s, text_encoder_share=encoder_s / seconds)
    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)
    if FLAGS.profile_dir:
        os.makedirs(FLAGS.profile_dir, exist_ok=True)
        with open(os.path.join(FLAGS.profile_dir, "train_step.hlo.txt"), "w") as f:
            f.write(step.as_text())
        with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(one_step())


if __name__ == "__main__":
    app.run(main)
