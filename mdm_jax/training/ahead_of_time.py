"""Compiling a config's train step for devices this machine doesn't have (TPU slices,
hosts of NVIDIA cards).

With libtpu installed (`pip install -e '.[tpu]'`), `jax.experimental.topologies` describes
a TPU slice (`v5e:16x16`, `v5p:4x4x4`) on any host; with jax's CUDA plugin
(`pip install -e '.[gpu-aot]'`), H100 or H200 hosts (`h100:8`, gpu_targets.py). The step
lowered on abstract, sharded inputs compiles for them: per-chip memory, FLOPs and
collectives are known before a pod or a GPU is booked. Text comes as features of the
encoder's width in the batch (as the reference trains, on precomputed features); the
frozen encoder is not in the program.
"""
import collections
import os
import re

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from mdm_jax.conditioning.text import TextConditioning, no_text, precomputed_text
from mdm_jax.models import build_model
from mdm_jax.parallel import sharding
from mdm_jax.runs import state as state_lib
from mdm_jax.runs.stages import find_stage, fresh_params, plan_stages, top_level_shape
from mdm_jax.training import gpu_targets
from mdm_jax.training.step import make_train_step

# High-bandwidth memory per chip, by jax's device_kind.
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")


def topology_devices(name):
    """The devices of a TPU topology such as 'v5e:2x2' or 'v5p:4x4x4', or of NVIDIA cards
    such as 'h200' (one), 'h100:8' (eight of one host) or 'h100:2x8' (two such hosts)."""
    if gpu_targets.parse(name) is not None:
        return gpu_targets.devices(name)
    # Compiling drives no chip, so several compiles may run side by side; without this
    # libtpu's lockfile refuses every process but the first.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
    except Exception as e:  # libtpu missing, or a name it doesn't know
        raise ValueError(f"Can't describe TPU topology {name!r} ({e}). Install libtpu "
                         "(pip install -e '.[tpu]') and name a slice as "
                         "'v5e:16x16' or 'v5p:4x4x4', or cards as 'h100:8'.") from e


def hbm_bytes(device_kind):
    """The memory a program may use on a chip of this kind: a TPU's HBM, or the share of
    an H100's or H200's that jax's allocator takes (gpu_targets.memory_fraction)."""
    if device_kind.startswith("NVIDIA"):
        return gpu_targets.usable_bytes(device_kind)
    for kind in sorted(HBM_GIB, key=len, reverse=True):  # 'TPU v5 lite' before 'TPU v5'
        if device_kind.startswith(kind):
            return HBM_GIB[kind] * 2**30
    return None


def count_collectives(hlo_text):
    """Collective ops of a compiled program's text, by kind (async pairs counted once)."""
    counts = collections.Counter()
    for kind in COLLECTIVES:
        counts[kind] = len(re.findall(rf"(?<![\w-]){kind}(?:-start)?\(", hlo_text))
    return dict(counts)


def compile_train_step(config, devices, stage_name=None, batch_size=None, hlo_path=None):
    """Compiles `config`'s train step (its last stage, or `stage_name`) on `devices`;
    returns a report: chips, mesh, per-chip memory (bytes), FLOPs, collectives. The
    compiled program's text goes to `hlo_path` if given.

    A TPU has no cuDNN: attention set to 'cudnn' (the GPU presets') compiles as 'xla', as a
    TPU run must set it (--config.model.attention_impl=xla); the report says which it used.
    """
    if devices[0].platform == "tpu" and config.model.attention_impl == "cudnn":
        config = config.copy_and_resolve_references()
        config.model.attention_impl = "xla"
    stages = plan_stages(config)
    stage = find_stage(stages, stage_name) if stage_name else stages[-1]
    batch_size = batch_size or stage.config.global_batch_size
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    if config.text.kind not in ("none", "precomputed", "t5"):
        raise ValueError(f"text.kind={config.text.kind!r}: ahead-of-time compiling takes "
                         "text as features in the batch (t5, precomputed or none).")
    text = TextConditioning(config.text)  # no encoder: its features come in the batch
    optimizer = state_lib.make_optimizer(config.optimizer, stage.config.learning_rate,
                                         stage.config.warmup_steps)
    state = sharding.abstract_with_shardings(
        lambda: state_lib.state_from_params(fresh_params(stage, text, 0), optimizer),
        mesh, rules)
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)

    def batch_input(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=sharding.batch_sharding(mesh, len(shape)))
    length = config.text.max_length
    batch = {"images": batch_input(top_level_shape(stage, batch_size), jnp.float32),
             "scale": batch_input((batch_size,), jnp.float32)}
    text_fn = no_text
    if config.text.kind != "none":
        width = stage.model_config.conditioning_feature_dim
        batch["text_embeddings"] = batch_input((batch_size, length, width), jnp.float32)
        batch["token_mask"] = batch_input((batch_size, length), jnp.int32)
        text_fn = precomputed_text
    if stage.model_config.num_classes:
        batch["labels"] = batch_input((batch_size,), jnp.int32)
    st = stage.config
    step = make_train_step(
        build_model(stage.model_config), stage.diffusion, stage.scales, optimizer,
        state_lib.learning_rate_schedule(st.learning_rate, st.warmup_steps),
        config.ema_decay, text_fn=text_fn,
        gradient_accumulation_steps=st.get("gradient_accumulation_steps", 1),
        batch_shards=sharding.batch_shards(mesh))
    lowered = jax.jit(step, donate_argnums=0,
                      out_shardings=(state_shardings, sharding.replicated(mesh))).lower(
        state, batch, jax.random.key(0))
    report = {"device_kind": devices[0].device_kind, "chips": len(devices),
              "mesh": dict(mesh.shape), "stage": stage.name, "global_batch": batch_size,
              "attention_impl": config.model.attention_impl,
              "hbm_bytes": hbm_bytes(devices[0].device_kind)}
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        needed = temporaries_needed(str(error))
        if needed is None:
            raise
        # The TPU compiler gives up once the temporaries alone exceed the chip: their
        # size is what it reports, a lower bound of the step's memory.
        return {**report, "fits": False, "per_chip_memory_bytes": needed,
                "per_chip_temp_bytes": needed}
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(compiled.as_text())
    memory = compiled.memory_analysis()
    per_chip = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                + memory.generated_code_size_in_bytes)
    cost = compiled.cost_analysis() or {}
    return {**report, "fits": report["hbm_bytes"] is None or per_chip <= report["hbm_bytes"],
            "per_chip_memory_bytes": per_chip,
            "per_chip_arguments_bytes": memory.argument_size_in_bytes,
            "per_chip_temp_bytes": memory.temp_size_in_bytes,
            "flops_per_chip": cost.get("flops"),
            "collectives": count_collectives(compiled.as_text())}


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def temporaries_needed(message):
    """Bytes of the "HLO temporaries (244.81G) exceeds available HBM" in an XLA TPU
    out-of-memory error, or None for another error."""
    found = re.search(r"RESOURCE_EXHAUSTED.*?HLO temporaries \(([\d.]+)([KMGT])\)", message,
                      re.DOTALL)
    return None if found is None else int(float(found.group(1)) * _UNITS[found.group(2)])
