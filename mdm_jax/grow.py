"""Grows a lower-stage checkpoint into the next stage's model, as a new run's start.

    python -m mdm_jax.grow --config=configs/cc12m_256.py --stage=res256 \
        --from_checkpoint=runs/cc12m_64/checkpoints/res64 --workdir=runs/cc12m_256

writes step 0 of stage `res256` in the workdir: the old params and EMA in the inner UNet,
fresh outer layers with zero adapters and output conv. `python -m mdm_jax.train` with the
same config and workdir then trains from it (earlier stages are skipped only if their
checkpoints are there, so give the config just the stages still to run, or reuse the
old workdir). A checkpoint of the wrong stage or architecture fails naming the mismatch.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax.train import checkpoint as ckpt_lib
from mdm_jax.train import loop, sharding, state as state_lib
from mdm_jax.train.text_conditioning import TextConditioning, resolve

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("stage", None, "The stage to grow into (a key of config.stages).")
flags.DEFINE_string("from_checkpoint", None, "Stage directory of the lower-stage run.")
flags.DEFINE_string("workdir", None, "The new run's workdir.")
flags.mark_flags_as_required(["config", "stage", "from_checkpoint", "workdir"])
FLAGS = flags.FLAGS


def grow(config, stage_name, from_checkpoint, workdir):
    """Writes the grown state as step 0 of `stage_name` in workdir; returns its directory."""
    resolve(config)
    stages = loop.plan_stages(config)
    by_name = {s.name: s for s in stages}
    if stage_name not in by_name:
        raise ValueError(f"--stage={stage_name!r} is not in config.stages ({sorted(by_name)}).")
    stage = by_name[stage_name]
    if stage.index == 0:
        raise ValueError(f"Stage {stage_name!r} is the config's first: nothing to grow from.")
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    text = TextConditioning.create(config, mesh, rules)
    st = stage.config
    optimizer = state_lib.make_optimizer(config.optimizer, st.learning_rate, st.warmup_steps)
    state, _ = loop.grown_state(config, stages, stage, text, optimizer, mesh, rules,
                                os.path.abspath(from_checkpoint))
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", stage.name)
    checkpoints = ckpt_lib.StageCheckpoints(directory)
    if checkpoints.latest_step() is not None:
        raise FileExistsError(f"{directory} already has checkpoints; grow into a new workdir.")
    checkpoints.save(0, state, loop.stage_checkpoint_config(config, stage))
    checkpoints.wait()
    checkpoints.close()
    return directory


def main(argv):
    del argv
    directory = grow(FLAGS.config, FLAGS.stage, FLAGS.from_checkpoint, FLAGS.workdir)
    logging.info("Grown checkpoint written to %s", directory)


if __name__ == "__main__":
    app.run(main)
