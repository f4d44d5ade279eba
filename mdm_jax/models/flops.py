"""Model FLOPs per example, for throughput and MFU reporting.

We count the multiply-adds of every matmul and convolution in the traced forward
program (2 FLOPs each), which is what model FLOPs utilisation conventionally counts:
elementwise work (norms, activations) is left out. Tracing is abstract (no compute), so
the count follows the architecture exactly, whatever the config. XLA's own
`cost_analysis()` undercounts convolutions on GPU, so this is what MFU uses.
"""
import math

import jax
import numpy as np
from jax.extend import core as jex_core

from mdm_jax.models import build_model, example_inputs, init_params

# Backward costs about twice the forward (gradients w.r.t. activations and weights).
TRAINING_MULTIPLIER = 3


def _dot_general_flops(eqn):
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn):
    rhs = eqn.invars[1].aval
    dims = eqn.params["dimension_numbers"]
    kernel_spatial = math.prod(rhs.shape[d] for d in dims.rhs_spec[2:])
    in_per_group = rhs.shape[dims.rhs_spec[1]]
    return 2 * math.prod(eqn.outvars[0].aval.shape) * kernel_spatial * in_per_group


def sub_jaxprs(value):
    """The jaxprs an equation's parameter value holds (a loop's body, a call's program)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from sub_jaxprs(v)


def jaxpr_matmul_flops(jaxpr):
    """FLOPs of dot_general and convolution equations, recursing into sub-programs."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_general_flops(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            total += _conv_flops(eqn)
        for value in eqn.params.values():
            for sub in sub_jaxprs(value):
                total += jaxpr_matmul_flops(sub)
    return total


def forward_flops_per_example(model_config, image_size, text_length=128, level_rows=None):
    """Matmul and convolution FLOPs of one forward pass over all levels, per example.

    level_rows: the rows each level runs on (highest resolution first) in a batch of
    max(level_rows) examples, as a mixed ratio makes them (diffusion.level_batch_sizes);
    default every row at every level.
    """
    config = model_config.copy_and_resolve_references()
    config.attention_impl = None  # the XLA attention path traces to plain matmuls
    # The up convs as the architecture defines them (3x3 on the upsampled image): MFU
    # stays comparable with the reference's and with the plain path's; the sub-pixel
    # path does the same work in fewer FLOPs, which shows as a higher MFU.
    config.subpixel_upsample = False
    model = build_model(config)
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0), image_size))
    xs, kwargs = example_inputs(config, image_size, batch_size=1, text_length=text_length)
    batch = 1
    if level_rows is not None:
        batch = max(level_rows)
        xs, kwargs = example_inputs(config, image_size, batch_size=batch,
                                    text_length=text_length)
        xs = [x[:rows] for x, rows in zip(xs, level_rows)]
    closed = jax.make_jaxpr(lambda p: model.apply({"params": p}, xs, **kwargs))(params)
    return jaxpr_matmul_flops(closed.jaxpr) / batch


def training_flops_per_example(model_config, image_size, text_length=128, level_rows=None):
    """Forward plus backward FLOPs of one training example (3x the forward)."""
    return TRAINING_MULTIPLIER * forward_flops_per_example(model_config, image_size,
                                                           text_length, level_rows)


def parameter_count(params):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
