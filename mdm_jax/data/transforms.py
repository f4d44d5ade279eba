"""One record -> one training example (or a skip), in whichever process grain runs it.

An example holds the batch fields of docs/data.md plus counters.FIELD, this record's
conversions; a skipped record becomes {counters.FIELD: counts} alone, which
pipeline.SkipBadRecords drops after carrying its counts forward. Nothing a record holds
can raise out of here: a long run never stops on one bad record. What an example holds
of its caption (tokens, precomputed embeddings or nothing) is the caller's `TextInputs`.
"""
import dataclasses
import os

import grain
import numpy as np
from absl import logging

from mdm_jax.data import counters, images, records
from mdm_jax.data import text_embeddings as embeddings
from mdm_jax.data import tokenizer as tokenizer_lib

# The record field that carries a precomputed text embedding (see pipeline.WithEmbeddings).
EMBEDDING = "text_embedding_record"


@dataclasses.dataclass(frozen=True)
class TextInputs:
    """What the pipeline makes of each caption: tokens and their mask, or precomputed
    embeddings and their mask. Training derives it from its config's `text` section (the
    one place these are set); no TextInputs at all means batches without text."""
    tokenizer: str = ""  # sentencepiece model; '' = the data set's own (shapes ships one)
    max_length: int = 128  # tokens per caption, EOS included
    # Precomputed text embeddings (python -m mdm_jax.precompute_text) read instead of
    # tokens; '' = tokenise.
    embeddings_dir: str = ""

    def tokenizer_path(self, info):
        """The tokenizer's path for the data set a sources.SourceInfo describes."""
        return os.path.expanduser(self.tokenizer) or info.tokenizer


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    image_size: int
    random_crop: bool
    random_flip: bool
    max_image_pixels: int
    tokenizer: str  # path; '' when the batch has no tokens
    max_length: int  # tokens per caption
    filter_long_captions: bool
    caption_dropout: float
    label_dropout: float
    has_label: bool
    # Precomputed text embeddings (instead of tokens): their metadata and the embedding
    # and mask of "" that caption dropout substitutes.
    embeddings_metadata: dict = None
    unconditional: tuple = None
    # Video data sets: the first num_frames stored frames of each clip make its example
    # (one: a plain image, the first frame); 0 for a data set of images.
    num_frames: int = 0

    @classmethod
    def from_config(cls, config, info, text):
        """text: a TextInputs, or None for examples without text (captions unread)."""
        tokenizer, max_length, metadata, unconditional = "", 0, None, None
        if text is not None and info.has_caption:
            max_length = text.max_length
            if text.embeddings_dir:
                metadata = embeddings.read_metadata(text.embeddings_dir)
                unconditional = embeddings.unconditional(text.embeddings_dir)
            else:
                tokenizer = text.tokenizer_path(info)
        num_frames = (config.num_frames or info.num_frames) if info.num_frames else 0
        return cls(image_size=config.image_size, random_crop=config.crop == "random",
                   random_flip=config.random_flip, max_image_pixels=config.max_image_pixels,
                   tokenizer=tokenizer, max_length=max_length,
                   filter_long_captions=config.caption_overflow == "filter",
                   caption_dropout=config.caption_dropout, label_dropout=config.label_dropout,
                   has_label=info.has_label, embeddings_metadata=metadata,
                   unconditional=unconditional, num_frames=num_frames)


def decode_caption(data, counts):
    """Caption text from stored bytes. Not UTF-8: read as Windows-1252, the usual
    encoding of such web captions, dropping bytes that aren't characters there either."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counts[counters.READ_INDEX["converted_caption_utf8"]] += 1
        return data.decode("cp1252", errors="ignore")


class ProcessRecord(grain.transforms.RandomMap):
    """Decode, crop, flip, `scale`, tokenise, drop out: a grain RandomMap."""

    def __init__(self, spec):
        self.spec = spec

    def random_map(self, record, rng):
        counts = counters.zeros()
        # Every draw happens for every record, so a record's randomness doesn't depend on
        # the options or on what earlier records held.
        crop_offset, flip, drop_caption, drop_label = rng.random(4)
        try:
            example = self._example(record, crop_offset, flip < 0.5,
                                    drop_caption < self.spec.caption_dropout,
                                    drop_label < self.spec.label_dropout, counts)
        except counters.Skip as skip:
            counts[counters.READ_INDEX[skip.counter]] += 1
            return {counters.FIELD: counts}
        except Exception as error:  # noqa: BLE001 - counted and logged, never fatal
            logging.log_every_n_seconds(logging.WARNING, "Skipped a record: %r", 60, error)
            counts[counters.READ_INDEX["skipped_error"]] += 1
            return {counters.FIELD: counts}
        example[counters.FIELD] = counts
        return example

    def _example(self, record, crop_offset, flip, drop_caption, drop_label, counts):
        spec = self.spec
        example = {}
        if spec.tokenizer:  # text first: a skipped caption then costs no image decoding
            example["tokens"], example["token_mask"] = self._tokens(
                record[records.CAPTION], drop_caption, counts)
        if spec.embeddings_metadata:
            embedding, mask = (spec.unconditional if drop_caption else embeddings.decode_record(
                record[EMBEDDING], spec.embeddings_metadata)[1:])
            example["text_embeddings"], example["token_mask"] = embedding, mask
        if spec.num_frames:
            pixels, stored_size = self._clip(record[records.FRAMES], counts)
        else:
            pixels, stored_size = self._image(record[records.IMAGE], crop_offset, counts)
        if spec.random_flip and flip:
            pixels = pixels[..., ::-1, :]  # the width axis: every frame of a clip alike
        example["images"] = pixels.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)
        # `scale` is the original image's shorter side in pixels: how many original pixels
        # the crop spans (see docs/data.md for the reference's definition).
        width, height = int(record[records.WIDTH]), int(record[records.HEIGHT])
        if width <= 0 or height <= 0:
            width, height = stored_size
        example["scale"] = np.float32(min(width, height))
        if spec.has_label:
            example["labels"] = np.int32(-1 if drop_label else record[records.LABEL])
        return example

    def _image(self, data, crop_offset, counts):
        """(uint8 [S, S, 3], (width, height) as stored) of encoded image bytes."""
        spec = self.spec
        image, stored_size = images.open_rgb(data, spec.image_size, spec.max_image_pixels,
                                             counts)
        if min(image.size) < spec.image_size:
            counts[counters.READ_INDEX["upscaled_small"]] += 1
        return images.square(image, spec.image_size,
                             crop_offset if spec.random_crop else None), stored_size

    def _clip(self, frames, counts):
        """(uint8 [T, S, S, 3], or [S, S, 3] for T = 1; (width, height) as stored) of a
        clip's first T encoded frames. They are square already (the builders crop them);
        a frame larger than S is resized down (data.image_size is never above the stored
        size: config.validate)."""
        spec = self.spec
        decoded = [images.open_rgb(data, spec.image_size, spec.max_image_pixels, counts)
                   for data in frames[:spec.num_frames]]
        pixels = np.stack([images.square(frame, spec.image_size) for frame, _ in decoded])
        return (pixels[0] if spec.num_frames == 1 else pixels), decoded[0][1]

    def _tokens(self, caption, drop, counts):
        spec = self.spec
        tokenizer = tokenizer_lib.load(spec.tokenizer)
        text = decode_caption(caption, counts)
        if not text.strip():
            raise counters.Skip("skipped_empty_caption")
        # The caption is checked even when dropped, so that which records are kept never
        # depends on the dropout draw.
        ids, truncated = tokenizer_lib.fit(
            tokenizer.encode(text), spec.max_length, tokenizer.eos_id)
        if truncated:
            if spec.filter_long_captions:
                raise counters.Skip("caption_filtered")
            counts[counters.READ_INDEX["caption_truncated"]] += 1
        if drop:
            ids = tokenizer.encode("")
        return tokenizer.pad(ids, spec.max_length)
