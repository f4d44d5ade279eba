"""CLIP score: the Flax CLIP against Hugging Face's (PyTorch, CPU) on tiny random checkpoints
(safetensors and pytorch_model.bin, quick_gelu and gelu, both EOS pooling rules), the image
preprocessing against CLIPImageProcessor, the tokenizer against CLIPTokenizer, config
reading, released shapes, and checkpoint errors.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lazy_imports import LazyModule
from mdm_jax.evaluation import clip

torch = LazyModule("torch", reason="pip install -e '.[test]' brings torch")
transformers = LazyModule("transformers")

IMAGE_SIZE = 32
MAX_LENGTH = 16
WORDS = ("a", "photo", "of", "the", "cat", "dog", "on", "mat", "red", "it's", "café")


def clip_vocabulary():
    """A tiny CLIP-style byte-level BPE: (vocab, merges).

    Every byte as a symbol, alone and word-final ("</w>"), merges that build WORDS left to
    right, and the special tokens last, so that EOS has the largest id as in CLIP.
    """
    from tokenizers import pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    merges = []
    for word in WORDS:
        for piece, _ in byte_level.pre_tokenize_str(word):
            symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
            current = symbols[0]
            for s in symbols[1:]:
                if f"{current} {s}" not in merges:
                    merges.append(f"{current} {s}")
                    tokens.append(current + s)
                current += s
    tokens += [clip.BOS_TOKEN, clip.EOS_TOKEN]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def write_vocabulary(directory):
    vocab, merges = clip_vocabulary()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("vocab"))
    write_vocabulary(directory)
    return directory


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_dir):
    return transformers.CLIPTokenizer.from_pretrained(vocab_dir)


def hf_model(hidden_act, legacy_eos, vocab_size, seed=0):
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, hidden_act=hidden_act)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH,
                         bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1,
                         eos_token_id=2 if legacy_eos else vocab_size - 1),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=16)
    return transformers.CLIPModel(config).eval()


def write_checkpoint(model, directory, layout, tokenizer):
    """config.json + weights in `layout`, the tokenizer and a preprocessor_config.json."""
    if layout == "safetensors":
        model.save_pretrained(directory)
    else:
        model.config.to_json_file(os.path.join(directory, "config.json"))
        torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
    tokenizer.save_pretrained(directory)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return directory


# quick_gelu with the OpenAI configs' legacy eos_token_id=2 (pool at the largest id);
# exact gelu with the real EOS id (pool at the first EOS).
VARIANTS = {"quick_gelu": ("quick_gelu", True), "gelu": ("gelu", False)}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def model_and_dirs(request, tmp_path_factory, hf_tokenizer):
    hidden_act, legacy = VARIANTS[request.param]
    model = hf_model(hidden_act, legacy, len(hf_tokenizer))
    dirs = {layout: write_checkpoint(model, str(tmp_path_factory.mktemp(layout)), layout,
                                     hf_tokenizer)
            for layout in ("safetensors", "bin")}
    return model, dirs


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, hf_tokenizer):
    """One tiny safetensors checkpoint, for the tests that need only one."""
    return write_checkpoint(hf_model("gelu", False, len(hf_tokenizer), seed=1),
                            str(tmp_path_factory.mktemp("one")), "safetensors", hf_tokenizer)


def pooled(output):
    """transformers 5 returns a model output whose pooler_output is the projection."""
    return getattr(output, "pooler_output", output).numpy()


def example_tokens(vocab_size, seed=0):
    """Ids and mask [4, MAX_LENGTH]: EOS after the real tokens then EOS padding, except the
    last row, which is all real tokens without an EOS (each pooling rule's edge case)."""
    rng = np.random.default_rng(seed)
    eos = vocab_size - 1
    lengths = np.array([MAX_LENGTH - 1, 7, 2, MAX_LENGTH])
    positions = np.arange(MAX_LENGTH)[None]
    ids = rng.integers(0, eos, (4, MAX_LENGTH))
    ids = np.where(positions < lengths[:, None], ids, eos)
    mask = (positions <= lengths[:, None]).astype(np.int32)
    return ids.astype(np.int32), mask


def reference_embeddings(model, pixel_values, ids, mask):
    with torch.no_grad():
        image = pooled(model.get_image_features(pixel_values=torch.tensor(pixel_values)))
        text = pooled(model.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long),
                                              attention_mask=torch.tensor(mask)))
    return image, text


def max_error(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_towers_match_transformers(model_and_dirs, layout):
    model, dirs = model_and_dirs
    config = clip.CLIPConfig.from_pretrained(dirs[layout])
    params = clip.load_params(dirs[layout], config)
    module = clip.CLIP(config)
    pixels = np.random.default_rng(1).normal(size=(4, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    ids, mask = example_tokens(config.text.vocab_size)
    want_image, want_text = reference_embeddings(model, pixels, ids, mask)

    image = jax.jit(clip.image_embeddings, static_argnums=(0, 3))(
        module, params, pixels.transpose(0, 2, 3, 1), False)
    text = jax.jit(clip.text_embeddings, static_argnums=(0, 4))(module, params, ids, mask, False)
    print(f"{layout} {config.text.hidden_act}: max |image| error "
          f"{max_error(image, want_image):.2e}, |text| error {max_error(text, want_text):.2e}")
    np.testing.assert_allclose(image, want_image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(text, want_text, atol=1e-5, rtol=0)

    # The score as torchmetrics computes it, from HF's embeddings (in float64).
    want_image, want_text = want_image.astype(np.float64), want_text.astype(np.float64)
    cos = np.sum(want_image * want_text, -1) / (np.linalg.norm(want_image, axis=-1)
                                                 * np.linalg.norm(want_text, axis=-1))
    want_score = 100 * np.maximum(cos, 0)
    np.testing.assert_allclose(clip.clip_score(want_image, want_text), want_score,
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(clip.mean_clip_score(want_image, want_text),
                               max(100 * cos.mean(), 0.0), atol=1e-5, rtol=0)
    # From our float32 embeddings: 1e-5 in cosine, float32's resolution, is 1e-3 in score.
    score = clip.clip_score(image, text)
    print(f"max |score| error {max_error(score, want_score):.2e}")
    np.testing.assert_allclose(score, want_score, atol=1e-3, rtol=0)
    # Normalised embeddings are unit vectors with the same direction.
    np.testing.assert_allclose(np.linalg.norm(clip.normalize(image), axis=-1), 1, atol=1e-6)


def test_scorer_end_to_end_matches_processor(model_and_dirs, hf_tokenizer):
    """uint8 and [-1, 1] images at the model's size and raw captions, through the whole path."""
    model, dirs = model_and_dirs
    scorer = clip.CLIPScorer.from_pretrained(dirs["safetensors"], batch_size=2)
    images = np.random.default_rng(2).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions = ["a photo of the cat", "A red dog on the mat!", "it's café 2024"]

    processor = transformers.CLIPImageProcessor.from_pretrained(dirs["safetensors"])
    pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = hf_tokenizer(captions, padding="max_length", truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        want_image = pooled(model.get_image_features(pixel_values=pixel_values))
        want_text = pooled(model.get_text_features(**tokens))

    ours = np.asarray(clip.preprocess_images(images, scorer.processing))
    np.testing.assert_allclose(ours, pixel_values.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
    from_uint8 = scorer.image_embeddings(images, normalized=False)
    from_float = scorer.image_embeddings(images.astype(np.float32) / 127.5 - 1, normalized=False)
    text = scorer.text_embeddings(captions, normalized=False)
    print(f"end to end: max |image| error {max_error(from_uint8, want_image):.2e} (uint8), "
          f"{max_error(from_float, want_image):.2e} (float), "
          f"|text| {max_error(text, want_text):.2e}")
    for got, want in ((from_uint8, want_image), (from_float, want_image), (text, want_text)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    want_image, want_text = want_image.astype(np.float64), want_text.astype(np.float64)
    cos = np.sum(clip.normalize(want_image) * clip.normalize(want_text), -1)
    score = scorer.score(images, captions)
    print(f"end to end: max |score| error {max_error(score, 100 * np.maximum(cos, 0)):.2e}")
    np.testing.assert_allclose(score, 100 * np.maximum(cos, 0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(64, 64), (16, 16), (48, 48), (48, 64), (40, 32)])
def test_resize_differs_from_processors_by_rounding(shape):
    """Images of other sizes are resampled: our float bicubic (antialiased when shrinking)
    against PIL's and torchvision's uint8 bicubic differs by their uint8 rounding, at most
    about 1/255. (Without antialiasing, 64² -> 32² would differ from PIL by up to 10/255.)
    40x32 needs no resize, only the centre crop: equal to float precision."""
    rng = np.random.default_rng(3)
    # A smooth random image (samples are smooth at the pixel scale) with some detail.
    coarse = rng.uniform(0, 255, (1, 8, 8, 3))
    smooth = np.asarray(jax.image.resize(coarse, (1, *shape, 3), "linear"))
    images = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).round().astype(np.uint8)
    processing = clip.ImageProcessing(size=IMAGE_SIZE, crop_size=IMAGE_SIZE)
    ours = np.asarray(clip.preprocess_images(images, processing))
    kwargs = dict(size={"shortest_edge": IMAGE_SIZE},
                  crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    std = np.asarray(clip.OPENAI_CLIP_STD)
    bound = 1e-6 if min(shape) == IMAGE_SIZE else 1.5 / 255
    for name, processor in (("PIL", transformers.CLIPImageProcessorPil(**kwargs)),
                            ("torchvision", transformers.CLIPImageProcessor(**kwargs))):
        theirs = np.asarray(processor(images=list(images), return_tensors="np")["pixel_values"])
        # Back to [0, 1] units: the difference per pixel before normalisation.
        diff = np.abs(ours - theirs.transpose(0, 2, 3, 1)) * std
        print(f"{shape} -> {IMAGE_SIZE}², vs {name}: max {diff.max() * 255:.2f}/255, "
              f"mean {diff.mean() * 255:.3f}/255")
        assert diff.max() < bound and diff.mean() < 0.4 / 255


def test_tokenizer_matches_clip_tokenizer(vocab_dir, hf_tokenizer, tmp_path):
    saved = str(tmp_path / "saved")
    hf_tokenizer.save_pretrained(saved)
    assert os.path.isfile(os.path.join(saved, "tokenizer.json"))
    captions = ["a photo of the cat", "A  Red\tDOG on the mat!!", "it's 2024, café.", "",
                " ".join(["the red cat"] * 10)]  # the last is longer than MAX_LENGTH
    want = hf_tokenizer(captions, padding="max_length", truncation=True, max_length=MAX_LENGTH)
    assert len(hf_tokenizer(captions[-1])["input_ids"]) > MAX_LENGTH
    for directory in (saved, vocab_dir):  # tokenizer.json; vocab.json + merges.txt
        ids, mask = clip.tokenize(clip.load_tokenizer(directory, MAX_LENGTH), captions)
        assert ids.dtype == mask.dtype == np.int32
        np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
        np.testing.assert_array_equal(mask, np.array(want["attention_mask"]))
    # The long caption keeps its EOS in the last position.
    assert ids[-1, -1] == hf_tokenizer.eos_token_id and mask[-1].all()

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        clip.load_tokenizer(str(tmp_path))


def test_checkpoint_errors_name_the_tensors(checkpoint_dir, tmp_path):
    source = checkpoint_dir
    tensors = load_file(os.path.join(source, "model.safetensors"))
    config = clip.CLIPConfig.from_pretrained(source)

    def variant(name, change):
        directory = tmp_path / name
        directory.mkdir()
        with open(os.path.join(source, "config.json")) as f:
            (directory / "config.json").write_text(f.read())
        save_file(change(dict(tensors)), str(directory / "model.safetensors"))
        return str(directory)

    dropped = "vision_model.encoder.layers.1.mlp.fc2.bias"
    missing = variant("missing", lambda t: {k: v for k, v in t.items() if k != dropped})
    with pytest.raises(ValueError, match=f"missing tensors: {dropped}"):
        clip.load_params(missing, config)

    reshaped = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    misshaped = variant("misshaped", lambda t: {**t, reshaped: t[reshaped][:, :-1]})
    with pytest.raises(ValueError, match=rf"mis-shaped tensors: {reshaped} has shape "
                                         rf"\(32, 31\), expected \(32, 32\)") as error:
        clip.load_params(misshaped, config)
    assert "unexpected" not in str(error.value)

    extra = variant("extra", lambda t: {**t, "text_model.head.weight": np.zeros(3, np.float32),
                                        "text_model.embeddings.position_ids": np.arange(4)})
    with pytest.raises(ValueError, match=r"unexpected tensors \(not part of this model\): "
                                         r"text_model\.head\.weight\."):
        clip.load_params(extra, config)


def test_config_reads_like_transformers():
    # Defaults are transformers' (those a config.json may leave out).
    text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
    for ours, theirs in ((clip.TextConfig(), text), (clip.VisionConfig(), vision)):
        for field in ours.__dataclass_fields__:
            assert getattr(ours, field) == getattr(theirs, field), field
    # A legacy file with a partial text_config_dict (as openai/clip-vit-large-patch14 has):
    # its missing keys fall back to the defaults, not to text_config.
    hf = {"model_type": "clip", "projection_dim": 768,
          "text_config": {"hidden_size": 768, "eos_token_id": 2, "hidden_act": "gelu",
                          "num_attention_heads": 12},
          "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072},
          "vision_config": {"hidden_size": 1024, "patch_size": 14, "image_size": [224, 224],
                            "num_attention_heads": 16, "num_hidden_layers": 24}}
    ours = clip.CLIPConfig.from_dict(hf)
    theirs = transformers.CLIPConfig.from_dict(hf)
    for mine, hf_tower in ((ours.text, theirs.text_config), (ours.vision, theirs.vision_config)):
        for field in mine.__dataclass_fields__:
            assert getattr(mine, field) == _scalar(getattr(hf_tower, field)), field
    assert ours.text.eos_token_id == 49407 and ours.text.hidden_act == "quick_gelu"
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        clip.TextConfig(hidden_act="relu")


def _scalar(value):
    return value[0] if isinstance(value, (list, tuple)) else value


# Released architectures (their config.json's sizes); B/32 is transformers' default.
RELEASED = {
    "ViT-B/32": {},
    "ViT-B/16": dict(vision_config=dict(patch_size=16)),
    "ViT-L/14": dict(projection_dim=768,
                     text_config=dict(hidden_size=768, intermediate_size=3072,
                                      num_attention_heads=12),
                     vision_config=dict(hidden_size=1024, intermediate_size=4096,
                                        num_attention_heads=16, num_hidden_layers=24,
                                        patch_size=14)),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_shapes_match_transformers(name):
    """Every tensor of the released model maps to one of our parameters of that shape."""
    hf = transformers.CLIPConfig(**RELEASED[name])
    with torch.device("meta"):
        state = transformers.CLIPModel(hf).state_dict()
    config = clip.CLIPConfig.from_dict(hf.to_dict())
    ours = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(clip.abstract_params(config))[0]:
        tensor, layout = clip.hf_name(tuple(k.key for k in path))
        ours[tensor] = clip._checkpoint_shape(leaf.shape, layout)
    theirs = {k: tuple(v.shape) for k, v in state.items() if not clip._IGNORED.search(k)}
    assert ours == theirs
    count = sum(int(np.prod(s)) for s in ours.values())
    print(f"{name}: {count:,} parameters")


def test_bfloat16_scorer_is_close(checkpoint_dir):
    """bfloat16 weights and matmuls: cosines within 0.02 of float32's."""
    images = np.random.default_rng(4).uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    captions = ["a photo of the cat", "the red dog"]
    full = clip.CLIPScorer.from_pretrained(checkpoint_dir)
    half = clip.CLIPScorer.from_pretrained(checkpoint_dir, dtype=jnp.bfloat16)
    assert jax.tree_util.tree_leaves(half.params)[0].dtype == jnp.bfloat16
    cos_full = np.sum(full.image_embeddings(images) * full.text_embeddings(captions), -1)
    cos_half = np.sum(half.image_embeddings(images) * half.text_embeddings(captions), -1)
    print(f"bfloat16: max |cos| error {max_error(cos_half, cos_full):.2e}")
    np.testing.assert_allclose(cos_half, cos_full, atol=0.02)
