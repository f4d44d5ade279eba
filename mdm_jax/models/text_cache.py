"""Every attention layer's text keys and values, computed once for a sampling loop.

In a sampling loop the text does not change, but each step's forward pass would project
it again in every attention layer (kv_cond), and XLA's GPU backend does not hoist those
loop-invariant matrix products out of the loop. The sampler computes them here, before
the loop, and passes them in the layers.TEXT_KEYS_VALUES collection. Same values, the
same parameters: this applies each layer's own norm_cond and kv_cond.
"""
from typing import Any, Mapping

import flax.linen as nn

from mdm_jax.models import layers


class _TextKeysValues(nn.Module):
    """One attention layer's norm_cond and kv_cond, as Attention names them."""
    channels: int
    dtype: Any

    @nn.compact
    def __call__(self, tokens):
        return layers.text_keys_values(tokens, self.channels, self.dtype)


def text_keys_values_collection(params, tokens, dtype):
    """{TEXT_KEYS_VALUES: tree} to add to model.apply's variables: for each attention
    layer in `params` (unboxed), its keys and values of `tokens` (the processed text of
    UNet.condition, a row per image or clip), at the layer's path."""
    def walk(tree):
        if "kv_cond" in tree:
            own = {"norm_cond": tree["norm_cond"], "kv_cond": tree["kv_cond"]}
            channels = tree["kv_cond"]["kernel"].shape[-1] // 2
            return {"kv": _TextKeysValues(channels, dtype).apply({"params": own}, tokens)}
        found = {key: walk(sub) for key, sub in tree.items() if isinstance(sub, Mapping)}
        return {key: sub for key, sub in found.items() if sub}
    return {layers.TEXT_KEYS_VALUES: walk(params)}
