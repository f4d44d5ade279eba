"""Text encoders: the Flax T5 against Hugging Face's (PyTorch, CPU) on tiny random
checkpoints in every file layout, checkpoint errors, sharded and bf16 loading, the small
trainable encoder, and the factory's config handling.
"""
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from safetensors.numpy import load_file, save_file

from mdm_jax.models import text
from mdm_jax.models.text import t5
from mdm_jax.parallel import sharding

torch = pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")
transformers = pytest.importorskip("transformers")

LENGTH = 24
# Tiny T5 v1.1: few buckets and a short max distance so that 24 tokens reach the
# logarithmic buckets and the clamp; vocab and widths divisible by 8 (fsdp sharding).
TINY = dict(vocab_size=104, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0)


def hf_model(feed_forward_proj="gated-gelu", seed=0):
    """A random T5ForConditionalGeneration: a full checkpoint, decoder and LM head included."""
    torch.manual_seed(seed)
    config = transformers.T5Config(feed_forward_proj=feed_forward_proj, **TINY)
    return transformers.T5ForConditionalGeneration(config).eval()


def write_checkpoint(model, directory, layout):
    """`model` in one of Hugging Face's layouts: config.json plus the weights."""
    if layout == "safetensors":
        model.save_pretrained(directory)
    elif layout == "sharded_safetensors":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert os.path.isfile(os.path.join(directory, "model.safetensors.index.json"))
    elif layout == "bin":
        os.makedirs(directory)
        model.config.to_json_file(os.path.join(directory, "config.json"))
        # What older transformers wrote: the state dict, tied embeddings included.
        torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
    return directory


def example_tokens(lengths=(LENGTH, 10, 1), seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(LENGTH)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return np.where(mask, rng.integers(2, TINY["vocab_size"], mask.shape), 0).astype(np.int32), mask


def reference_states(model, tokens, mask):
    with torch.no_grad():
        out = model.get_encoder()(input_ids=torch.tensor(tokens, dtype=torch.long),
                                  attention_mask=torch.tensor(mask))
    return out.last_hidden_state.numpy()


def t5_config(checkpoint_dir, **overrides):
    cfg = text.text_encoder_config(kind="t5", max_length=LENGTH, **overrides)
    cfg.t5.checkpoint_dir = str(checkpoint_dir)
    return cfg


def run_encoder(module, params, tokens, mask):
    return np.asarray(jax.jit(text.encode, static_argnums=0)(module, params, tokens, mask),
                      np.float32)


@pytest.fixture(scope="module")
def gated_model():
    return hf_model()


@pytest.fixture(scope="module")
def safetensors_dir(gated_model, tmp_path_factory):
    return write_checkpoint(gated_model, str(tmp_path_factory.mktemp("t5") / "ckpt"),
                            "safetensors")


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "bin"])
def test_t5_matches_transformers(gated_model, layout, tmp_path):
    directory = write_checkpoint(gated_model, str(tmp_path / "ckpt"), layout)
    module, params = text.load_text_encoder(t5_config(directory))
    tokens, mask = example_tokens()
    ours = run_encoder(module, params, tokens, mask)
    expected = reference_states(gated_model, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], rtol=0, atol=1e-5)
    assert np.all(ours[~real] == 0), "padded positions must be exactly zero"


def test_t5_v1_0_relu_feed_forward_matches_transformers(tmp_path):
    model = hf_model("relu", seed=1)
    directory = write_checkpoint(model, str(tmp_path / "ckpt"), "safetensors")
    module, params = text.load_text_encoder(t5_config(directory))
    assert "wi" in params["block_0"]["layer_1"]["DenseReluDense"]
    tokens, mask = example_tokens(seed=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(run_encoder(module, params, tokens, mask)[real],
                               reference_states(model, tokens, mask)[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 256)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
    length = 600
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
    np.testing.assert_array_equal(
        t5.relative_position_buckets(length, num_buckets, max_distance), expected.numpy())


def _rewrite_weights(source_dir, target_dir, change):
    """A copy of the checkpoint whose tensors dict went through `change`."""
    os.makedirs(target_dir)
    with open(os.path.join(source_dir, "config.json")) as f:
        config = f.read()
    with open(os.path.join(target_dir, "config.json"), "w") as f:
        f.write(config)
    tensors = load_file(os.path.join(source_dir, "model.safetensors"))
    change(tensors)
    save_file(tensors, os.path.join(target_dir, "model.safetensors"))
    return target_dir


def test_missing_tensor_is_named(safetensors_dir, tmp_path):
    name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    directory = _rewrite_weights(safetensors_dir, str(tmp_path / "ckpt"),
                                 lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing tensors: {name}"):
        text.load_text_encoder(t5_config(directory))


def test_misshaped_tensor_is_named(safetensors_dir, tmp_path):
    name = "encoder.block.2.layer.0.SelfAttention.k.weight"

    def change(tensors):
        tensors[name] = np.zeros((32, 31), np.float32)
    directory = _rewrite_weights(safetensors_dir, str(tmp_path / "ckpt"), change)
    with pytest.raises(ValueError, match=rf"{name} has shape \(32, 31\), expected \(32, 32\)"):
        text.load_text_encoder(t5_config(directory))


def test_unexpected_encoder_tensor_is_named(safetensors_dir, tmp_path):
    name = "encoder.block.3.layer.0.SelfAttention.q.weight"

    def change(tensors):
        tensors[name] = np.zeros((32, 32), np.float32)
    directory = _rewrite_weights(safetensors_dir, str(tmp_path / "ckpt"), change)
    with pytest.raises(ValueError, match=f"unexpected tensors.*{name}"):
        text.load_text_encoder(t5_config(directory))


def test_config_mismatch_names_the_missing_layer(safetensors_dir, tmp_path):
    directory = _rewrite_weights(safetensors_dir, str(tmp_path / "ckpt"), lambda t: None)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    config["num_layers"] = 4
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"encoder\.block\.3\.layer\.0\.SelfAttention\.k\.weight"):
        text.load_text_encoder(t5_config(directory))


def test_directory_without_weights_lists_the_expected_files(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    transformers.T5Config(**TINY).to_json_file(str(directory / "config.json"))
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        text.load_text_encoder(t5_config(directory))


def test_bin_without_torch_says_what_to_install(gated_model, tmp_path, monkeypatch):
    directory = write_checkpoint(gated_model, str(tmp_path / "ckpt"), "bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError, match=r"pip install 'mdm-jax\[torch\]'"):
        text.load_text_encoder(t5_config(directory))


def test_activation_comes_from_config_json():
    assert t5.T5Config.from_dict({"feed_forward_proj": "gated-gelu"}).dense_act_fn == "gelu_new"
    explicit = t5.T5Config.from_dict({"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu"})
    assert (explicit.dense_act_fn, explicit.is_gated_act) == ("gelu", True)
    with pytest.raises(ValueError, match="dense_act_fn='tanhshrink'"):
        t5.T5Config.from_dict({"feed_forward_proj": "gated-tanhshrink"})


def test_t5_loads_sharded_over_the_mesh(safetensors_dir):
    """With the training rules, as the training loop shards the denoiser."""
    cfg = t5_config(safetensors_dir)
    mesh = sharding.make_mesh(dict(data=1, fsdp=8, tensor=1))
    shardings = sharding.tree_shardings(text.abstract_params(cfg), mesh, sharding.DEFAULT_RULES)
    module, params = text.load_text_encoder(cfg, shardings=shardings)
    q = params["block_0"]["layer_0"]["SelfAttention"]["q"]["kernel"]
    assert q.sharding == NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
    assert q.addressable_shards[0].data.shape == (32, 4)
    assert params["shared"]["embedding"].addressable_shards[0].data.shape == (13, 32)
    _, unsharded = text.load_text_encoder(cfg)
    tokens, mask = example_tokens()
    np.testing.assert_allclose(run_encoder(module, params, tokens, mask),
                               run_encoder(module, unsharded, tokens, mask), rtol=0, atol=1e-5)


def test_t5_bfloat16_weights_and_activations(safetensors_dir):
    tokens, mask = example_tokens()
    module32, params32 = text.load_text_encoder(t5_config(safetensors_dir))
    module16, params16 = text.load_text_encoder(t5_config(safetensors_dir, dtype="bfloat16"))
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {jnp.dtype(jnp.bfloat16)}
    out16 = jax.jit(text.encode, static_argnums=0)(module16, params16, tokens, mask)
    assert out16.dtype == jnp.bfloat16
    out32 = run_encoder(module32, params32, tokens, mask)
    real = mask.astype(bool)
    error = np.abs(np.asarray(out16, np.float32) - out32)[real]
    assert error.max() < 0.05 * np.abs(out32[real]).max()
    assert np.all(np.asarray(out16, np.float32)[~real] == 0)


def test_t5_preset_random_weights_have_the_released_shapes():
    cfg = text.text_encoder_config(kind="t5", max_length=8)
    cfg.t5.preset = "flan-t5-xl"
    abstract = nn.unbox(text.abstract_params(cfg))
    assert abstract["shared"]["embedding"].shape == (32128, 2048)
    ff = abstract["block_23"]["layer_1"]["DenseReluDense"]
    assert ff["wi_0"]["kernel"].shape == (2048, 5120) and ff["wo"]["kernel"].shape == (5120, 2048)
    count = sum(x.size for x in jax.tree_util.tree_leaves(abstract))
    assert 1.2e9 < count < 1.25e9  # Flan-T5-XL's encoder: about 1.22B parameters
    assert text.feature_dim(cfg) == 2048


# The small trainable encoder.

def small_config(**small):
    cfg = text.text_encoder_config(kind="small", max_length=16)
    cfg.small.update(dict(vocab_size=50, width=32, depth=2, num_heads=4, **small))
    return cfg


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_small_encoder_shapes_and_masking(position):
    cfg = small_config(position=position)
    module, params = text.load_text_encoder(cfg, rng=jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, (3, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < np.array([16, 5, 1])[:, None]).astype(np.int32)
    out = run_encoder(module, params, tokens, mask)
    assert out.shape == (3, 16, 32)
    real = mask.astype(bool)
    assert np.all(out[~real] == 0) and np.all(np.abs(out[real]).sum(-1) > 0)
    # What sits in padded positions must not reach the real ones.
    other = np.where(real, tokens, (tokens + 7) % 50)
    np.testing.assert_allclose(run_encoder(module, params, other, mask)[real], out[real],
                               rtol=0, atol=1e-6)


def test_small_encoder_trains_every_parameter():
    cfg = small_config()
    module, params = text.load_text_encoder(cfg, rng=jax.random.key(2))
    tokens, mask = np.ones((2, 16), np.int32), np.ones((2, 16), np.int32)
    mask[1, 4:] = 0
    target = np.random.default_rng(0).normal(size=(2, 16, 32)).astype(np.float32)

    def loss(p):
        return jnp.mean((text.encode(module, p, tokens, mask) - target) ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_small_encoder_rejects_more_tokens_than_max_length():
    module = text.build_text_encoder(small_config())
    too_long = np.ones((1, 17), np.int32)
    with pytest.raises(ValueError, match="max_length=16"):
        jax.eval_shape(module.init, jax.random.key(0), too_long, too_long)


def test_small_encoder_params_carry_logical_axes():
    specs = nn.get_partition_spec(text.abstract_params(small_config()))
    assert specs["token_embedding"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["layers_0_attn"]["qkv"]["kernel"] == jax.sharding.PartitionSpec(
        "embed_in", "embed_out")
    assert text.is_trainable(small_config())
    assert text.feature_dim(small_config()) == 32


# The factory's config handling.

@pytest.mark.parametrize("overrides,message", [
    (dict(kind="clip"), "text.kind='clip'"),
    (dict(kind="t5"), "exactly one of text.t5.checkpoint_dir"),
    (dict(kind="small", small=dict(width=30, num_heads=4, vocab_size=9, depth=1,
                                   position="learned")), "divisible by text.small.num_heads"),
    (dict(kind="small"), "needs text.tokenizer"),
    (dict(kind="precomputed"), "needs text.precomputed_dir"),
    (dict(dtype="float16"), "text.dtype='float16'"),
])
def test_validate_names_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        text.validate(text.text_encoder_config(**overrides))


def test_none_kind_has_no_encoder():
    cfg = text.text_encoder_config()
    assert text.load_text_encoder(cfg) == (None, None)
    assert text.feature_dim(cfg) == 0 and not text.is_trainable(cfg)
