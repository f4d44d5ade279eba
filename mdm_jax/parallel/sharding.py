"""The device mesh, how parameters and batches are laid out on it, and creating a
sharded tree without a host copy.

Parameters carry logical axis names (see mdm_jax/models/layers.py); the config's rules
map them to mesh axes, FSDP style: each large weight is split over `fsdp` (and `data`
when the rules say so), and gathered by XLA where it is used. A dimension that the mesh
axes don't divide stays replicated rather than failing, so small layers (the 3-channel
output conv, say) just live whole on every device.

A tree (a train state, say) is built abstractly first (`jax.eval_shape`), its shardings
derived from the parameters' logical axis names, then materialised by a jitted init whose
out_shardings write every shard on the device that owns it: no device ever holds the
whole model.
"""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
# The batch dimension is split over every mesh axis (data parallel within FSDP).
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes. Output channels of convs and dense layers are sharded over
# fsdp; everything else (kernel taps, input channels, norms) is replicated.
DEFAULT_RULES = (
    ("conv_out", "fsdp"),
    ("embed_out", "fsdp"),
    ("vocab", "fsdp"),
    ("kh", None),
    ("kw", None),
    ("conv_in", None),
    ("embed_in", None),
    ("embed", None),
    ("norm", None),
    ("classes", None),
)


def mesh_shape(mesh_config, num_devices):
    """Sizes of (data, fsdp); one entry may be -1 for 'all remaining devices'."""
    if mesh_config.get("tensor", 1) != 1:
        # Configs saved before the axis was dropped carry tensor=1, which is harmless.
        raise ValueError(f"config.mesh.tensor={mesh_config['tensor']}: tensor parallelism "
                         "is not implemented; shard over fsdp instead (config.mesh.fsdp).")
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError("At most one mesh axis may be -1; got mesh "
                         f"{dict(zip(MESH_AXES, sizes))}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices can't be split into mesh "
                             f"{dict(zip(MESH_AXES, sizes))}: {num_devices} is not a multiple "
                             f"of {known}. Change config.mesh.")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} "
                         f"devices but {num_devices} are present; make the product equal the "
                         "device count (or set one axis to -1).")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None):
    """A Mesh over all devices with axes (data, fsdp), Auto axis types."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    # jax.make_mesh defaults to Explicit axes, which our FSDP step can't use.
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _fits(dim, mesh_axes, mesh):
    axes = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
    return dim % math.prod(mesh.shape[a] for a in axes) == 0


def logical_to_spec(logical_axes, shape, mesh, rules):
    """PartitionSpec for one array; mesh axes that don't divide a dimension are dropped."""
    spec = nn.logical_to_mesh_axes(logical_axes, rules)
    return PartitionSpec(*(
        axes if axes is not None and _fits(dim, axes, mesh) else None
        for axes, dim in zip(spec, shape)))


def tree_shardings(boxed_tree, mesh, rules):
    """NamedShardings for a tree of (abstract) arrays boxed with logical axis names.

    Leaves without names (optimizer counters, for example) are replicated.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = logical_to_spec(leaf.names, leaf.value.shape, mesh, rules)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(one, boxed_tree,
                                  is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh, ndim):
    """The batch dimension split over data and fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def mesh_and_rules(config):
    """The config's mesh over every device, and its sharding rules as tuples."""
    return make_mesh(config.mesh), tuple(tuple(r) for r in config.sharding_rules)


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


def create_sharded(make_boxed, mesh, rules, *args):
    """Runs `make_boxed(*args)` (a pytree with logically boxed leaves) sharded.

    Returns (tree, shardings): the unboxed tree, each leaf made on the devices that own
    it, and the matching NamedSharding tree (the train step's state shardings).
    """
    abstract = jax.eval_shape(make_boxed, *args)
    shardings = tree_shardings(abstract, mesh, rules)
    tree = jax.jit(lambda *a: nn.unbox(make_boxed(*a)), out_shardings=shardings)(*args)
    return tree, shardings


def abstract_with_shardings(make_boxed, mesh, rules):
    """ShapeDtypeStructs carrying shardings: a restore target that writes onto `mesh`."""
    abstract = jax.eval_shape(make_boxed)
    shardings = tree_shardings(abstract, mesh, rules)
    unboxed = jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, abstract,
                                     is_leaf=_is_box)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)


def rebox(boxed_like, values):
    """`values` (a plain tree) in the logical-axis boxes of `boxed_like` (a boxed tree of
    the same structure), so they shard as the boxes say; unboxed leaves pass through."""
    return jax.tree_util.tree_map(
        lambda box, value: box.replace_boxed(value) if _is_box(box) else value,
        boxed_like, values, is_leaf=_is_box)
