"""NVIDIA cards described for compiling without one (deviceless ahead-of-time compiling).

With the CUDA plugin installed (`pip install -e '.[gpu-aot]'`: jax's CUDA PJRT plugin and
ptxas, no driver or GPU needed), `jax.experimental.topologies` describes a host of cards
from a target description, and a program lowered on abstract inputs sharded over them
compiles as it would on the cards, less autotuning (so cuDNN's workspace is not chosen
and kernels may differ; the buffers, and so the memory analysis, are the program's).
"""
import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Card:
    name: str            # jax's device_kind on the real card
    memory_mib: int      # nvidia-smi's memory.total
    bandwidth: int       # bytes/s, for the fusion cost model
    sm_count: int = 132
    clock_ghz: float = 1.98


CARDS = {
    "h100": Card("NVIDIA H100 80GB HBM3", 81_559, 3_350_000_000_000),
    "h200": Card("NVIDIA H200", 143_771, 4_800_000_000_000),
}
TOPOLOGY = re.compile(r"(?P<card>h100|h200)(?::(?:(?P<hosts>\d+)x)?(?P<cards>\d+))?$")

# jax's GPU allocator may use this share of a card unless the environment says otherwise
# (xla_client.generate_pjrt_gpu_plugin_options).
DEFAULT_MEMORY_FRACTION = 0.75


def parse(name):
    """(Card, hosts, cards per host) of 'h100', 'h200:8' or 'h100:2x8'; None for another
    name (a TPU's)."""
    found = TOPOLOGY.match(name.lower())
    if found is None:
        return None
    return (CARDS[found["card"]], int(found["hosts"] or 1), int(found["cards"] or 1))


def target_config(card):
    """The GpuTargetConfig text XLA compiles for in place of a device's description: the
    Hopper SM's limits and this card's size and speed."""
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {card.sm_count}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {card.bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: {card.clock_ghz}
  device_memory_size: {card.memory_mib * 2**20}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{card.name}"
"""


def memory_fraction():
    """The share of a card jax's allocator takes: XLA_CLIENT_MEM_FRACTION (or the older
    XLA_PYTHON_CLIENT_MEM_FRACTION) if set, else 0.75."""
    value = (os.environ.get("XLA_CLIENT_MEM_FRACTION")
             or os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"))
    return float(value) if value else DEFAULT_MEMORY_FRACTION


def usable_bytes(device_kind):
    """What a program may allocate on the card of this device_kind, or None if unknown."""
    for card in CARDS.values():
        if device_kind == card.name:
            return int(memory_fraction() * card.memory_mib * 2**20)
    return None


def devices(name):
    """The devices of `name` ('h200:8': 8 H200s of one host), described, not opened.
    Without a driver the plugin's CUDA version check is skipped (mdm_jax/__init__.py):
    nothing runs, the target description stands in for the driver."""
    card, hosts, per_host = parse(name)
    from jax.experimental import topologies
    try:
        topology = topologies.get_topology_desc(
            platform="cuda", target_config=target_config(card),
            topology=f"1x{hosts}x{per_host}")
    except Exception as e:  # no plugin, or one that can't describe cards
        raise ValueError(f"Can't describe {name!r} without a GPU ({e}). Install the CUDA "
                         "plugin: pip install -e '.[gpu-aot]'.") from e
    return topology.devices
