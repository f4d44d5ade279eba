"""Train-step benchmark: step time, images/s, TFLOP/s, MFU and peak memory, as JSON lines.

    python -m benchmarks.bench_train --config=configs/cc12m_1024.py --batch_size=4 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl

Runs the last stage of the config on random images and tokens (no data pipeline, so the
numbers are the model's), with the config's text encoder inside the step, and times the
text encoder alone to give its share of the step.
"""
import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.timing import timed
from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.models import build_model
from mdm_jax.models import text as text_lib
from mdm_jax.models.flops import parameter_count, training_flops_per_example
from mdm_jax.parallel import sharding
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.stages import fresh_params, plan_stages
from mdm_jax.training import metrics
from mdm_jax.training.step import make_train_step

config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
flags.DEFINE_integer("batch_size", None, "Global batch (default: the last stage's).")
flags.DEFINE_integer("steps", 10, "Timed steps, after 2 warm-up steps.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = FLAGS.config
    stage = plan_stages(config)[-1]
    batch_size = FLAGS.batch_size or stage.config.global_batch_size
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    device = jax.devices()[0]
    text = TextConditioning.create(config, mesh, rules)
    optimizer = state_lib.make_optimizer(config.optimizer, 1e-5, 10)
    state, shardings = sharding.create_sharded(
        lambda: state_lib.state_from_params(fresh_params(stage, text, 0), optimizer),
        mesh, rules)
    rng = np.random.default_rng(0)
    size, length = stage.image_size, config.text.max_length
    host = {"images": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
            "scale": np.full((batch_size,), float(size), np.float32)}
    if config.text.kind != "none":
        host["tokens"] = rng.integers(1, 1000, (batch_size, length)).astype(np.int32)
        host["token_mask"] = np.ones((batch_size, length), np.int32)
    if stage.model_config.num_classes:
        host["labels"] = rng.integers(0, stage.model_config.num_classes, batch_size)
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in host.items()}
    step = jax.jit(make_train_step(build_model(stage.model_config), stage.diffusion,
                                   stage.scales, optimizer, lambda s: 1e-5, config.ema_decay,
                                   text_fn=text.text_fn()),
                   donate_argnums=0, out_shardings=(shardings, sharding.replicated(mesh)))
    holder = {"state": state}

    def one_step():
        holder["state"], m = step(holder["state"], batch, jax.random.key(0), text.frozen_params)
        return m["loss"]

    seconds = timed(one_step, FLAGS.steps, warmup=2)
    flops = training_flops_per_example(stage.model_config, size, length)
    per_chip = batch_size / seconds / jax.device_count()
    peak = metrics.peak_flops_per_chip(device)
    stats = device.memory_stats() or {}
    result = {
        "benchmark": "train_step", "device": device.device_kind, "chips": jax.device_count(),
        "stage": stage.name, "image_size": size, "global_batch": batch_size,
        "model_dtype": config.model.dtype, "text": config.text.kind,
        "unet_params_m": parameter_count(holder["state"].params["unet"]) / 1e6,
        "step_s": seconds, "images_per_s_per_chip": per_chip,
        "model_tflops_per_s_per_chip": per_chip * flops / 1e12,
        "mfu": per_chip * flops / peak if peak else None,
        "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30}
    if text.frozen_params is not None:
        encode = jax.jit(lambda p, t, m: text_lib.encode(text.module, p, t, m))
        tokens, mask = batch["tokens"], batch["token_mask"]
        encoder_s = timed(lambda: encode(text.frozen_params, tokens, mask), FLAGS.steps,
                          warmup=2)
        result.update(text_params_m=parameter_count(text.frozen_params) / 1e6,
                      text_encoder_s=encoder_s, text_encoder_share=encoder_s / seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
