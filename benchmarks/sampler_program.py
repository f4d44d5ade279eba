"""What a step of the sampling loop runs, from its program compiled for a described GPU
card (no GPU needed: the gpu-aot extra), as JSON lines: the GEMMs inside the loop's body,
how many of them project the text (kv_cond, lm_proj, the LM head, cond_emb), and XLA's
memory analysis; once with the text processed at every step (make_sampler's
condition_once=False) and once with it processed before the loop.

    python -m benchmarks.sampler_program --config=configs/cc12m_64.py --batch_size=8 \
        --steps=50 --guidance=7 \
        --config.text.t5.checkpoint_dir= --config.text.t5.preset=flan-t5-xl

XLA's GPU backend keeps loop-invariant GEMMs inside a while loop's body, so a text GEMM
counted in the body runs at every step.
"""
import json
import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mdm_jax.models import build_model, init_params
from mdm_jax.parallel import sharding, xla_flags
from mdm_jax.runs.stages import plan_stages, top_level_shape
from mdm_jax.sampling import sampler as samples
from mdm_jax.training import gpu_targets

config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
flags.DEFINE_enum("card", "h200", sorted(gpu_targets.CARDS), "The card to compile for.")
flags.DEFINE_integer("batch_size", 8, "Images (clips) per sampling call.")
flags.DEFINE_integer("steps", 50, "Sampling steps.")
flags.DEFINE_float("guidance", 7.0, "Guidance scale (1: none).")
flags.DEFINE_enum("sampler", "ddpm", samples.SAMPLERS, "Sampler.")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|"
                     r"called_computations)=\{?([^}\s]+(?:, %?[\w.\-]+)*)\}?")
_TEXT_LAYER = re.compile(r'op_name="[^"]*(kv_cond|lm_proj|cond_emb|lm_head)')


def computations(hlo_text):
    """Computation name -> its instruction lines, from a compiled program's text."""
    found, name = {}, None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match and name is None:
            name, found[match.group(1)] = match.group(1), []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            found[name].append(line)
    return found


def loop_body_lines(hlo_text):
    """The instruction lines of every while loop's body and of what the body calls."""
    comps = computations(hlo_text)
    bodies = [m.group(1) for m in re.finditer(r"\bbody=%?([\w.\-]+)", hlo_text)]
    seen, todo = set(), list(bodies)
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            for group in _CALLED.findall(line):
                todo.extend(n.strip().lstrip("%") for n in group.split(","))
    return [line for name in seen for line in comps[name]]


def is_gemm(line):
    """A matrix product: cuBLAS's custom call, or a dot XLA kept as one."""
    return 'custom_call_target="__cublas' in line or re.search(r"= \S+ dot\(", line)


def main(argv):
    del argv
    xla_flags.apply_defaults()  # the program the sampling command's process would compile
    config = FLAGS.config
    stage = plan_stages(config)[-1]
    mesh = sharding.make_mesh(config.mesh, gpu_targets.devices(FLAGS.card))
    replicated = sharding.replicated(mesh)
    params = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(lambda: init_params(stage.model_config, jax.random.key(0),
                                           stage.image_size)))

    def batch(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=sharding.batch_sharding(mesh, len(shape)))
    n, model_config = FLAGS.batch_size, stage.model_config
    labels = lm = mask = uncond_lm = uncond_mask = None
    if model_config.conditioning_feature_dim > 0:
        length, width = config.text.max_length, model_config.conditioning_feature_dim
        lm, mask = batch((n, length, width), jnp.float32), batch((n, length), jnp.int32)
        if FLAGS.guidance != 1:
            uncond_lm, uncond_mask = lm, mask
    if model_config.num_classes > 0:
        labels = batch((n,), jnp.int32)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    for once in (False, True):
        run = samples.make_sampler(
            build_model(model_config), stage.diffusion, stage.scales,
            top_level_shape(stage, n), sampler=FLAGS.sampler, num_steps=FLAGS.steps,
            eta=0.0, guidance_scale=FLAGS.guidance, mesh=mesh, condition_once=once)
        start = time.perf_counter()
        compiled = run.lower(params, key, labels, lm, mask, uncond_lm, uncond_mask).compile()
        compile_s = time.perf_counter() - start
        text = compiled.as_text()
        gemms = [line for line in text.splitlines() if is_gemm(line)]
        body = [line for line in loop_body_lines(text) if is_gemm(line)]
        memory = compiled.memory_analysis()
        print(json.dumps({
            "benchmark": "sampler_program", "card": FLAGS.card, "stage": stage.name,
            "batch": n, "steps": FLAGS.steps, "guidance": FLAGS.guidance,
            "sampler": FLAGS.sampler, "condition_once": once,
            "loop_gemms": len(body),
            "loop_text_gemms": sum(bool(_TEXT_LAYER.search(line)) for line in body),
            "text_gemms": sum(bool(_TEXT_LAYER.search(line)) for line in gemms),
            "memory_gib": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                           - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 2**30,
            "compile_s": compile_s}), flush=True)


if __name__ == "__main__":
    app.run(main)
