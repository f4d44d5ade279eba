"""The device mesh, how parameters and batches are laid out on it, and creating a
sharded tree without a host copy.

Parameters carry logical axis names (see mdm_jax/models/layers.py); the config's rules
map them to mesh axes, FSDP style: each large weight is split over `fsdp` (and `data`
when the rules say so), and gathered by XLA where it is used. A dimension that the mesh
axes don't divide stays replicated rather than failing, so small layers (the 3-channel
output conv, say) just live whole on every device.

A tree (a train state, say) is built abstractly first (`jax.eval_shape`), its shardings
derived from the parameters' logical axis names, then materialised by jitted code whose
out_shardings write every shard on the device that owns it: no device ever holds the
whole model. Fresh parameters are made leaf by leaf (`create_leafwise`), from the
initialiser each box remembers (mdm_jax/models/initializers.py): one small program per
(initialiser, shape, sharding), compiled in parallel threads, instead of one program with
hundreds of random initialisers that takes a GPU most of a minute to compile.
"""
import concurrent.futures
import functools
import math
import os

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


def batch_shards(mesh):
    """How many blocks `batch_sharding` cuts the batch into: the data x fsdp devices."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def mesh_and_rules(config):
    """The config's mesh over every device, and its sharding rules as tuples."""
    return make_mesh(config.mesh), tuple(tuple(r) for r in config.sharding_rules)


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


@functools.cache
def _leaf_program(init, shape, dtype, leaf_sharding, seed):
    """One leaf's init(index), compiled: its key is the seed's folded with the leaf's
    index, so that leaves sharing a program still differ."""
    make = jax.jit(lambda index: init(jax.random.fold_in(jax.random.key(seed), index),
                                      shape, dtype),
                   out_shardings=leaf_sharding)
    return make.lower(np.uint32(0)).compile()


def create_leafwise(abstract_boxed, mesh, rules, seed):
    """Fresh values for `abstract_boxed` (`jax.eval_shape` of a boxed init whose every
    leaf's box holds its initialiser, as models/initializers.py makes them), each leaf made
    on the devices that own it. Returns the unboxed tree."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(abstract_boxed, is_leaf=_is_box)
    shardings = jax.tree_util.tree_leaves(tree_shardings(abstract_boxed, mesh, rules))
    programs = []
    for (path, box), leaf_sharding in zip(with_paths, shardings):
        init = getattr(box, "init", None)
        if init is None:
            raise TypeError(f"Parameter {jax.tree_util.keystr(path)} has no remembered "
                            "initialiser: create it with mdm_jax.models.initializers."
                            "partitioned.")
        programs.append((init, tuple(box.value.shape), box.value.dtype, leaf_sharding, seed))
    # Compiling is most of the cost and releases the GIL: the distinct programs in threads.
    unique = list(dict.fromkeys(programs))
    with concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        compiled = dict(zip(unique, pool.map(lambda p: _leaf_program(*p), unique)))
    values = [compiled[p](np.uint32(i)) for i, p in enumerate(programs)]
    return jax.tree_util.tree_unflatten(treedef, values)


def abstract_with_shardings(make_boxed, mesh, rules, *args):
    """ShapeDtypeStructs carrying shardings of `make_boxed(*args)` (args may be abstract):
    a restore target that writes onto `mesh`."""
    abstract = jax.eval_shape(make_boxed, *args)
    shardings = tree_shardings(abstract, mesh, rules)
    unboxed = jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, abstract,
                                     is_leaf=_is_box)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)
