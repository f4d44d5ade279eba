"""Sentencepiece tokenizers: load one, turn captions into padded ids and masks, train one.

Token layout (the same in training and sampling): the caption's sentencepiece ids, then
EOS, then the pad id up to max_length; mask 1 on the ids and EOS, 0 on padding. An empty
caption (caption dropout, or the unconditional half of classifier-free guidance) is EOS
alone. T5's `spiece.model` (pad 0, EOS 1, unk 2) works as is, and `train` writes models
with the same special ids.
"""
import functools
import io
import os

import numpy as np
import sentencepiece as spm


class Tokenizer:
    """A sentencepiece model, picklable (it travels to grain worker processes)."""

    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"No tokenizer model at {self.path}: point text.tokenizer at a sentencepiece "
                "model (T5's spiece.model works) or train one with "
                "`python -m mdm_jax.train_tokenizer --data.dataset=... --output=PATH`.")
        self._sp = spm.SentencePieceProcessor(model_file=self.path)
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"Tokenizer {self.path} has no EOS piece; captions need one "
                             "(train with eos_id set, as mdm_jax.train_tokenizer does).")
        # A model without a pad piece pads with id 0; the mask marks padding either way.
        self.pad_id = max(self._sp.pad_id(), 0)

    @property
    def vocab_size(self):
        return self._sp.vocab_size()

    def encode(self, text):
        """Ids of `text` followed by EOS (no padding, no length limit)."""
        return self._sp.encode(text) + [self.eos_id]

    def pad(self, ids, max_length):
        """(tokens, mask) int32 [max_length] from ids that fit."""
        tokens = np.full(max_length, self.pad_id, np.int32)
        mask = np.zeros(max_length, np.int32)
        tokens[:len(ids)] = ids
        mask[:len(ids)] = 1
        return tokens, mask

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


@functools.lru_cache(maxsize=8)
def load(path):
    """The tokenizer at `path`, loaded once per process."""
    return Tokenizer(path)


def fit(ids, max_length, eos_id):
    """ids (ending in EOS) cut to max_length with EOS kept last; and whether it was cut."""
    if len(ids) <= max_length:
        return ids, False
    return ids[:max_length - 1] + [eos_id], True


def tokenize(texts, tokenizer, max_length):
    """tokens, mask: int32 [len(texts), max_length]. Long captions are truncated (EOS kept).

    `tokenizer` is a Tokenizer or a path. The sampler uses this for prompts and for the
    unconditional input (tokenize([""], ...)), which then equals what training's caption
    dropout produced.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load(os.fspath(tokenizer))
    tokens = np.full((len(texts), max_length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    for i, text in enumerate(texts):
        tokens[i], mask[i] = tokenizer.pad(
            fit(tokenizer.encode(text), max_length, tokenizer.eos_id)[0], max_length)
    return tokens, mask


def train(captions, output_path, vocab_size=8000, model_type="unigram"):
    """Trains a sentencepiece model on an iterable of captions; writes it to output_path.

    Special ids follow T5 (pad 0, EOS 1, unk 2, no BOS). vocab_size is an upper bound
    (hard_vocab_limit=False): a small corpus yields a smaller vocabulary instead of an error.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
        hard_vocab_limit=False, model_type=model_type, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, character_coverage=1.0, minloglevel=2)
    output_path = os.path.abspath(os.path.expanduser(output_path))
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    temporary = output_path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(model.getvalue())
    os.replace(temporary, output_path)  # atomic: a reader never sees half a model
    return output_path
