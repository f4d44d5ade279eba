"""Joining the processes of a multi-host (or multi-process) run: shared by every command
that builds a mesh, so each takes the same flags.

    --distributed                                 TPU pods and SLURM detect the rest
    --coordinator_address=host:port --num_processes=N --process_id=I   anything else
"""
import jax
from absl import flags

from mdm_jax.parallel import xla_flags

_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")


def initialize_from_flags():
    """This project's default XLA flags, then jax.distributed.initialize as the flags say
    (nothing more for a single process). Call first, before anything starts jax's backend.
    """
    xla_flags.apply_defaults()
    if _COORDINATOR.value:
        # CPU runs need gloo for cross-process collectives; GPUs and TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                   _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
