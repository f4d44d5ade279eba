"""The update half of a training step (clip, AdamW, EMA, the non-finite guard), traced once
per distinct parameter shape.

optax's transformations and the EMA map over the whole parameter tree: tracing them binds
about twenty small functions for each of the 713-1,063 leaves, which cost more than
half as long as tracing the model's forward and backward passes (a CPU profile of the 64²
step's trace). Here every leaf goes through one jitted function of that leaf alone
(its gradient, parameter, EMA and optimizer state), so leaves of one shape share a trace,
as the model's identical layers do (models/unet.py). The arithmetic is optax's own: the
optimizer after clipping (`state.ClippedOptimizer.inner`) runs on a one-leaf tree, and
the clipping is optax's `clip_by_global_norm` with the global norm computed once. The
optimizer state keeps the layout of the whole-tree chain, so checkpoints are unchanged.

Each gradient is pinned to the parameters' own (row-major) memory layout before the update.
A GPU's convolution gives its kernel gradient in the [out, h, w, in] order cuDNN works in;
left free, XLA's layout assignment carried that order into the update, so the parameter,
EMA and both Adam moments of every conv kernel were transposed in and out each step: the
64² step's program compiled for an H200 had 200 transposes of state arrays, none with the
gradient pinned (docs/performance.md, "The gradient's layout"; tests/test_update.py).
"""
import jax
import jax.numpy as jnp
import optax
from jax.experimental.layout import Layout, with_layout_constraint

from mdm_jax.runs.state import ema_update

SHARED = -1  # a state leaf that is not one per parameter (a step count)


@jax.jit
def _sum_of_squares(leaf):
    return jnp.sum(jnp.square(leaf.real) + jnp.square(leaf.imag))


def global_norm(tree):
    """optax.tree.norm(tree), bit for bit (its per-leaf sums of squares added in leaf
    order), each leaf's sum traced once per shape."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        total = total + _sum_of_squares(leaf)
    return jnp.sqrt(total)


def _state_markers(inner, state, params):
    """For each leaf of `state` (flattened), the index of the parameter leaf it belongs to,
    or SHARED."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    indices = jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))
    markers = optax.tree_map_params(inner, lambda _, k: k, state, indices,
                                    transform_non_params=lambda _: SHARED)
    return jax.tree_util.tree_leaves(markers)


def make_update(optimizer, ema_decay):
    """update(state, grads, grad_norm, finite) -> state: params, EMA and optimizer state
    updated where `finite`, kept otherwise; `grad_norm` is global_norm(grads)."""
    inner, clip_norm = optimizer.inner, optimizer.clip_norm

    @jax.jit
    def one_leaf(grad, param, ema, leaf_state, grad_norm, finite, step):
        # One transpose of the gradient instead of four of the state (module docstring).
        grad = with_layout_constraint(grad, Layout(tuple(range(grad.ndim))))
        # optax.clip_by_global_norm's arithmetic, with the norm computed once for all.
        grad = jax.lax.select(grad_norm < clip_norm, grad,
                              (grad / grad_norm.astype(grad.dtype)) * clip_norm)
        updates, new_state = inner.update(grad, leaf_state, param)
        new_param = optax.apply_updates(param, updates)
        new_ema = ema_update(ema, new_param, ema_decay, step)
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda n, o: jnp.where(finite, n, o), new, old)
        return keep(new_param, param), keep(new_ema, ema), keep(new_state, leaf_state)

    def update(state, grads, grad_norm, finite):
        params, params_def = jax.tree_util.tree_flatten(state.params)
        grad_leaves = params_def.flatten_up_to(grads)
        ema_leaves = params_def.flatten_up_to(state.ema_params)
        opt_leaves, opt_def = jax.tree_util.tree_flatten(state.opt_state)
        # The state is (clip's, inner's); the clip keeps nothing per leaf.
        clip_state, inner_state = state.opt_state
        offset = len(jax.tree_util.tree_leaves(clip_state))
        positions = _positions_per_leaf(_state_markers(inner, inner_state, state.params),
                                        len(params), offset)
        leaf_def = jax.tree_util.tree_structure(jax.eval_shape(inner.init, params[0]))
        new_params, new_emas, new_opt = [], [], list(opt_leaves)
        for grad, param, ema, where in zip(grad_leaves, params, ema_leaves, positions):
            leaf_state = jax.tree_util.tree_unflatten(leaf_def, [opt_leaves[j] for j in where])
            param, ema, leaf_state = one_leaf(grad, param, ema, leaf_state, grad_norm,
                                              finite, state.step)
            new_params.append(param)
            new_emas.append(ema)
            # Shared leaves (the counts) come out alike from every leaf.
            for j, value in zip(where, jax.tree_util.tree_leaves(leaf_state)):
                new_opt[j] = value
        return state.replace(params=params_def.unflatten(new_params),
                             ema_params=params_def.unflatten(new_emas),
                             opt_state=opt_def.unflatten(new_opt))

    return update


def _positions_per_leaf(markers, num_params, offset):
    """Per parameter leaf, the positions (in the flattened optimizer state, after `offset`)
    of its one-leaf state: its own leaves and the shared ones, in order."""
    shared = [j for j, m in enumerate(markers) if m == SHARED]
    own = [[] for _ in range(num_params)]
    for j, m in enumerate(markers):
        if m != SHARED:
            own[m].append(j)
    return [[offset + j for j in sorted(shared + mine)] for mine in own]
