"""benchmarks/trace_summary.py reads a compiled program's text: a fusion that has no
op_name of its own (XLA's layout copies) is named after the ops inside it."""
import jax
import jax.numpy as jnp

from benchmarks.trace_summary import instructions, part_of


def test_fusions_are_described_and_named_after_their_insides():
    def loss(x, w):
        return jnp.sum(jax.nn.silu(jnp.einsum("bc,cd->bd", x, w)).T ** 2)

    text = jax.jit(jax.grad(loss)).lower(jnp.ones((8, 16)), jnp.ones((16, 4))).compile().as_text()
    program = instructions(text)
    fusions = {name: info for name, info in program.items() if info["what"].startswith("fusion")}
    assert fusions, text
    for info in fusions.values():
        # Every fusion says what its root is and carries some op_name of this program.
        assert " root=" in info["what"] and "?" not in info["what"], info
        assert info["op_name"].startswith("jit(loss)/"), info
    parameters = {info["what"] for info in program.values() if info["what"].startswith("param")}
    assert {"parameter f32[16,4]", "parameter f32[8,16]"} <= parameters
    assert part_of("jit(train_step)/jvp(unet)/conv1/conv_general_dilated") == "convolution"
    assert part_of("") == "other"
