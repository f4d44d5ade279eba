"""Parameter initialisers whose boxes remember them, so a state can be made leaf by leaf.

Every parameter is created through `partitioned(init, names)`: its box, a Flax
`LogicallyPartitioned` (the logical axis names the sharding rules read), also holds the
initialiser. `jax.eval_shape` of a model's init then gives each leaf's shape, dtype, axis
names and initialiser, and `mdm_jax.parallel.sharding.create_leafwise` makes every leaf
in a small program compiled once per (initialiser, shape, sharding): one program holding
all ~700 random initialisers of a large model takes 30-50 s to compile on a GPU.

The initialisers are module-level objects (or cached per argument) so that layers of the
same shape share one compiled program.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct

LECUN_NORMAL = nn.initializers.lecun_normal()
ZEROS = nn.initializers.zeros
ONES = nn.initializers.ones


@functools.cache
def normal(stddev):
    return nn.initializers.normal(stddev)


class InitBox(nn.LogicallyPartitioned):
    """A logically partitioned value that also holds the initialiser that made it."""
    init: Optional[Callable[..., Any]] = flax.struct.field(default=None, pytree_node=False)


def partitioned(init, names):
    """`init` with logical axis names attached (mapped to mesh axes by the config's rules)
    and remembered in the box."""
    @functools.wraps(init)
    def wrapper(*args, **kwargs):
        return InitBox(init(*args, **kwargs), names, init=init)
    return wrapper
