"""The leafwise update (mdm_jax/training/update.py) is the whole-tree optax chain, EMA and
guard it replaces, traced once per distinct leaf shape."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdm_jax.runs import state as state_lib
from mdm_jax.runs.defaults import base_config
from mdm_jax.training import update as update_lib
from mdm_jax.training.update import global_norm, make_update

SHAPES = {"a": (3, 4), "b": (4,), "c": (3, 4), "d": {"e": (2, 3, 4), "f": (4,)}}
DECAY = 0.99


def _tree(rng, scale=1.0):
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s), jnp.float32),
                        SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def _whole_tree_update(optimizer, state, grads, finite):
    """The step's update before update.py: optax's chain, EMA, guard, on whole trees."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.ema_update(state.ema_params, params, DECAY, state.step)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return state.replace(params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
                         opt_state=keep(opt_state, state.opt_state))


@pytest.mark.parametrize("grad_scale", [0.1, 100.0])  # under and over the clip norm
def test_leafwise_update_is_the_whole_tree_update(grad_scale):
    rng = np.random.default_rng(0)
    optimizer = state_lib.make_optimizer(base_config().optimizer, 1e-2, 2)
    old = new = state_lib.state_from_params(_tree(rng), optimizer)
    update = jax.jit(make_update(optimizer, DECAY))
    for step in range(4):
        grads = _tree(rng, grad_scale)
        finite = jnp.asarray(step != 2)  # step 2 is skipped, as a non-finite one would be
        norm = global_norm(grads)
        assert float(norm) == float(optax.tree.norm(grads))
        old = jax.jit(_whole_tree_update, static_argnums=0)(optimizer, old, grads, finite)
        new = update(new, grads, norm, finite)
        old, new = (s.replace(step=s.step + 1) for s in (old, new))
        assert jax.tree.structure(new) == jax.tree.structure(old)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    # The skipped step changed nothing, the others moved every parameter and count.
    assert int(new.opt_state[1][0].count) == 3
    assert all(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(
        jax.tree.leaves(new.params), jax.tree.leaves(state_lib.state_from_params(
            _tree(np.random.default_rng(0)), optimizer).params)))


def test_leaves_of_one_shape_share_one_trace():
    rng = np.random.default_rng(0)
    optimizer = state_lib.make_optimizer(base_config().optimizer, 1e-2, 2)
    state = state_lib.state_from_params(_tree(rng), optimizer)
    grads = _tree(rng)
    jaxpr = jax.make_jaxpr(make_update(optimizer, DECAY))(
        state, grads, optax.tree.norm(grads), jnp.asarray(True))
    calls = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("pjit", "jit")]
    assert len(calls) == 5  # one per leaf
    # Three shapes, (3, 4) twice and (4,) twice: three distinct traced programs.
    assert len({id(e.params["jaxpr"].jaxpr) for e in calls}) == 3


def test_global_norm_is_optax_s_under_jit():
    grads = _tree(np.random.default_rng(1), 3.0)
    ours = jax.jit(global_norm)(grads)
    theirs = jax.jit(optax.tree.norm)(grads)
    assert float(ours) == float(theirs)


def _conv_step_hlo(update):
    """The compiled text of a conv's gradient and `update` for an H100 (described without
    one: the gpu-aot packages of the test extra)."""
    pytest.importorskip("jax_plugins.xla_cuda12",
                        reason="pip install -e '.[test]' (or '.[gpu-aot]') brings it")
    from mdm_jax.training import gpu_targets
    device = gpu_targets.devices("h100")[0]
    optimizer = state_lib.make_optimizer(base_config().optimizer, 1e-2, 2)
    params = {"kernel": jnp.zeros((3, 3, 256, 128))}
    state = state_lib.state_from_params(params, optimizer)

    def step(state, x):
        def loss(p):
            y = jax.lax.conv_general_dilated(x, p["kernel"].astype(jnp.bfloat16), (1, 1),
                                             "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.mean(jnp.square(y.astype(jnp.float32)))
        grads = jax.grad(loss)(state.params)
        return update(state, grads, global_norm(grads), jnp.asarray(True))

    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = lambda t: jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), t)
    x = jnp.zeros((8, 32, 32, 256), jnp.bfloat16)
    return jax.jit(step).lower(abstract(state), abstract(x)).compile().as_text()


def _f32_transposes(text):
    """The op names of the float32 transposes anywhere in a compiled program."""
    names = re.findall(r'= f32\[[\d,]+\]\{[\d,]+\} transpose\(.*?op_name="([^"]*)"', text)
    return [name.replace("\\'", "'") for name in names]  # the text escapes quotes


def test_a_gpu_conv_kernels_state_is_updated_in_its_own_layout(monkeypatch):
    # cuDNN gives the kernel's gradient as [out, h, w, in]; pinned, the gradient is what
    # is transposed (in the backward pass), never the parameter, EMA or Adam moments.
    optimizer = state_lib.make_optimizer(base_config().optimizer, 1e-2, 2)
    pinned = _f32_transposes(_conv_step_hlo(make_update(optimizer, DECAY)))
    assert pinned and all(name.startswith("jit(step)/transpose(jvp") for name in pinned)
    # Unpinned (the layout left to XLA), every state array was transposed in.
    monkeypatch.setattr(update_lib, "with_layout_constraint", lambda x, layout: x)
    free = _f32_transposes(_conv_step_hlo(make_update(optimizer, DECAY)))
    assert {n for n in free if n.startswith("state.")} == {
        "state.params['kernel']", "state.ema_params['kernel']",
        "state.opt_state[1][0].mu['kernel']", "state.opt_state[1][0].nu['kernel']"}
