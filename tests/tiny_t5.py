"""A tiny random Hugging Face T5 encoder directory with its own sentencepiece model."""
import os

from mdm_jax.data import tokenizer as tokenizer_lib


def write_tiny_t5(directory, captions, d_model=32, vocab_size=60):
    """config.json + model.safetensors (seeded random) + spiece.model trained on captions."""
    import torch  # noqa: PLC0415 (test extra)
    import transformers  # noqa: PLC0415
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=104, d_model=d_model, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu"))
    model.save_pretrained(directory)
    tokenizer_lib.train([c for c in captions if c] * 4, os.path.join(directory, "spiece.model"),
                        vocab_size=vocab_size)
    return directory
