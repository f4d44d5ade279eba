"""Encoded image bytes -> an RGB square crop at the target size, converting what can be
converted and counting it; what can't be used raises counters.Skip.

Decoding is by Pillow. JPEGs much larger than the target decode at 1/2, 1/4 or 1/8 scale
(libjpeg's DCT scaling, `Image.draft`), which makes enormous photos cheap; anything still
above max_pixels after that is skipped rather than decoded.
"""
import io
import warnings

import numpy as np
from PIL import Image

from mdm_jax.data import counters
from mdm_jax.data.counters import Skip

# We enforce our own pixel limit (max_pixels) after JPEG draft scaling; Pillow's warning
# for large images would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

WHITE = (255, 255, 255)
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _is_sixteen_bit(image):
    """16-bit colour PNGs open as 8-bit RGB(A); only the raw tile mode shows their depth."""
    return any(isinstance(tile.args, str) and ";16" in tile.args for tile in image.tile)


def _to_rgb(image, sixteen_bit, counts):
    """An RGB image from any mode Pillow reads, counting the conversion."""
    if sixteen_bit and image.mode not in _SIXTEEN_BIT_GREY:
        counts[counters.READ_INDEX["converted_16bit"]] += 1
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "CMYK":
        counts[counters.READ_INDEX["converted_cmyk"]] += 1
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT_GREY or mode == "F":
        # Keep the top 8 bits of 16-bit grey (Pillow's own conversion clips at 255).
        counts[counters.READ_INDEX["converted_grey"]] += 1
        values = np.asarray(image, np.float64)
        if mode != "F":
            counts[counters.READ_INDEX["converted_16bit"]] += 1
            values = values / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("P", "PA"):
        counts[counters.READ_INDEX["converted_palette"]] += 1
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("1", "L", "LA", "La"):
        counts[counters.READ_INDEX["converted_grey"]] += 1
        image = image.convert("LA" if mode in ("LA", "La") else "RGB")
        mode = image.mode
    if mode in _ALPHA:
        counts[counters.READ_INDEX["converted_alpha"]] += 1
        background = Image.new("RGBA", image.size, WHITE + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # YCbCr, LAB, HSV: lossless colour-space changes


def open_rgb(data, target, max_pixels, counts):
    """(RGB image whose shorter side is near `target` or more, (width, height) as stored).

    Raises Skip('corrupt_image') for bytes Pillow can't decode whole (truncated files
    included), Skip('skipped_enormous') above max_pixels.
    """
    try:
        image = Image.open(io.BytesIO(data))
        stored_size = image.size
        if image.format == "JPEG":
            # Decode at the smallest DCT scale that keeps the shorter side >= target.
            shorter = min(image.size)
            image.draft(None, (-(-image.width * target // shorter),
                               -(-image.height * target // shorter)))
        if image.width * image.height > max_pixels:
            raise Skip("skipped_enormous")
        sixteen_bit = _is_sixteen_bit(image)  # before load(), which drops the tiles
        image.load()
        return _to_rgb(image, sixteen_bit, counts), stored_size
    except Skip:
        raise
    except Image.DecompressionBombError as error:
        raise Skip("skipped_enormous") from error
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad bytes
        raise Skip("corrupt_image") from error


def crop_box(width, height, random_offset):
    """The largest centred (or randomly placed, random_offset in [0, 1]) square."""
    side = min(width, height)
    offset = (max(width, height) - side) * (0.5 if random_offset is None else random_offset)
    return (offset, 0, offset + side, side) if width > height else (0, offset, side, offset + side)


def square(image, target, random_offset=None):
    """uint8 [target, target, 3]: the shorter side resized to target, then cropped square.

    Crop and resize are one Pillow resize of the crop box (bicubic, antialiased).
    """
    box = crop_box(image.width, image.height, random_offset)
    resized = image.resize((target, target), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized)
