"""Image inputs -> RGB: the one place where every image handed to the engine (by a user of the Scorer, a training
data file or a benchmark) is validated and converted, so training and every scoring backend see the same pixels
and the same errors.

Accepted inputs: a path (str or Path) or encoded bytes (PNG, JPEG, WebP, ... as PIL reads them; frame 0 of a
multi-frame file), a PIL image, or a numpy array of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].

Conversions (the Scorer docstring and the README repeat them):
- grayscale (PIL L or 1, [H, W], [H, W, 1]): the value repeated in R, G and B;
- alpha (RGBA, LA, a palette with transparency, [H, W, 4]): composited over white, as transformers'
  `convert_to_rgb` does for the Qwen2-VL processor, so a transparent area does not turn black;
- palette: its colours; CMYK, YCbCr, LAB, HSV: PIL's RGB conversion;
- 16-bit (PIL I;16 and I modes, uint16 arrays): scaled to 8 bits, v * 255 / 65535 rounded;
- float arrays: values in [0, 1] are scaled by 255, else values in [0, 255] are kept, then rounded;
- bool arrays: 0 or 255; other integer arrays must already lie in [0, 255].

Everything else is an error whose message starts with the input's `name` (e.g. "edited[3]"): a ValueError for an
unreadable or truncated file, a missing file, an empty (0-pixel) image, an image of more than `max_pixels` pixels,
NaN or infinite values, out-of-range values or a shape that is not an image; a TypeError for an input type or
array dtype that is not an image. The pixel count of an encoded image is checked from its header, before any
pixel is decoded, so a decompression bomb costs nothing.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray, str, Path, bytes]

# 64 Mpixel (8192 x 8192), below PIL's own DecompressionBombWarning threshold (~89 Mpixel) so that our check,
# with its clearer message, is the one that fires; edit benchmarks' images are at most a few Mpixel.
DEFAULT_MAX_PIXELS = 8192 * 8192

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL opens 16-bit grayscale PNG/TIFF as these


class ImageInputError(ValueError):
    """A bad image input; the message starts with the input's name."""


def to_rgb(image: ImageLike, *, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Any supported input -> a PIL image in mode RGB at its own size (see the module docstring for the rules)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    encoded = _encoded(image, name)
    if encoded is not None:
        return _decode(encoded, name, limit)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name, limit)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name, limit)
    raise TypeError(f"{name}: unsupported image type {type(image).__name__}; expected a path, encoded bytes, "
                    "a PIL image or a numpy array")


def check_encoded(image: str | Path | bytes, *, name: str = "image", max_pixels: int | None = None
                  ) -> tuple[int, int]:
    """(width, height) of a path or encoded bytes, read from the header alone: the errors of `to_rgb` for a
    missing, unidentifiable, empty or oversized image, at a fraction of a decode's cost (data loaders check every
    record with it). Pixel data that is truncated behind a valid header is only found by `to_rgb`."""
    encoded = _encoded(image, name)
    if encoded is None:
        raise TypeError(f"{name}: expected a path or encoded bytes, got {type(image).__name__}")
    return _decode(encoded, name, DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels), header_only=True)


def _encoded(image, name: str):
    """A path or a bytes stream for PIL to open, or None when `image` is not an encoded image."""
    if isinstance(image, (str, Path)):
        if not str(image).strip():
            raise ImageInputError(f"{name}: empty path")
        if "\0" in str(image):  # os.stat raises ValueError on it rather than answering
            raise ImageInputError(f"{name}: no such file {str(image)!r} (the path holds a NUL byte)")
        if not Path(image).exists():
            raise ImageInputError(f"{name}: no such file {image}")
        if not Path(image).is_file():
            raise ImageInputError(f"{name}: {image} is not a file")
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        if not len(image):
            raise ImageInputError(f"{name}: empty bytes")
        return io.BytesIO(bytes(image))
    return None


def _decode(source, name: str, limit: int, header_only: bool = False):
    try:
        with Image.open(source) as im:  # reads the header only
            _check_size(im.size, name, limit)
            return im.size if header_only else _pil_to_rgb(im, name, limit)  # the latter decodes
    except ImageInputError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own hard limit (2x its MAX_IMAGE_PIXELS), checked in open()
        raise ImageInputError(f"{name}: {e} (max_image_pixels cannot exceed PIL.Image.MAX_IMAGE_PIXELS * 2)") from e
    except Image.UnidentifiedImageError as e:
        raise ImageInputError(f"{name}: cannot read image (not a format PIL can identify)") from e
    except Exception as e:  # noqa: BLE001 - a decoder fed untrusted bytes fails with OSError, SyntaxError,
        # struct.error, EOFError, IndexError... (PIL's plugins differ); each means "unreadable", never a crash
        raise ImageInputError(f"{name}: cannot read image ({type(e).__name__}: {e})") from e


def _check_size(size: tuple[int, int], name: str, limit: int) -> None:
    w, h = size
    if w * h == 0:
        raise ImageInputError(f"{name}: empty image ({w} x {h} pixels)")
    if w * h > limit:
        raise ImageInputError(f"{name}: {w} x {h} = {w * h} pixels exceeds the limit of {limit} "
                              "(max_image_pixels; raise it to accept larger images)")


def _pil_to_rgb(im: Image.Image, name: str, limit: int) -> Image.Image:
    _check_size(im.size, name, limit)
    if im.mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(im), name, limit, sixteen_bit=True)
    if im.mode == "F":
        return _array_to_rgb(np.asarray(im), name, limit)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _over_white(im.convert("RGBA"))
    return im.convert("RGB")  # also loads a lazily opened file before its handle closes


def _over_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _array_to_rgb(arr: np.ndarray, name: str, limit: int, sixteen_bit: bool = False) -> Image.Image:
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: array dtype {arr.dtype} is not an image dtype (uint8, uint16, bool, float, "
                        "or integers in [0, 255])")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
        channels = 1 if arr.ndim == 2 else arr.shape[-1]
    else:
        raise ImageInputError(f"{name}: expected an image array of shape [H, W], [H, W, 1], [H, W, 3] or "
                              f"[H, W, 4], got {arr.shape}")
    h, w = arr.shape[:2]
    _check_size((w, h), name, limit)
    pixels = np.ascontiguousarray(_to_uint8(arr, name, sixteen_bit))
    if channels == 1:
        return Image.fromarray(pixels.reshape(h, w)).convert("RGB")  # uint8 arrays: L, RGBA, RGB by shape
    if channels == 4:
        return _over_white(Image.fromarray(pixels))
    return Image.fromarray(pixels)


def _to_uint8(arr: np.ndarray, name: str, sixteen_bit: bool) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        values = arr.astype(np.float64)  # float16 * 255 would overflow
        if not np.isfinite(values).all():
            raise ImageInputError(f"{name}: the array holds NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 255:
            raise ImageInputError(f"{name}: float values span [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
        return np.rint(values * 255.0 if hi <= 1.0 else values).astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if sixteen_bit or arr.dtype == np.uint16:
        if lo < 0 or hi > 65535:
            raise ImageInputError(f"{name}: 16-bit values span [{lo}, {hi}]; expected [0, 65535]")
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ImageInputError(f"{name}: {arr.dtype} values span [{lo}, {hi}]; integer images other than uint16 "
                              "must lie in [0, 255]")
    return arr.astype(np.uint8)
