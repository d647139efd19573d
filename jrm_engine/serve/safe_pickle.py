"""Restricted unpickling for the pickle-speaking reward-server protocol (Flow-GRPO / EditScore clients).

Why plain `pickle.loads` is never used: unpickling executes the body. A GLOBAL / STACK_GLOBAL opcode imports any
attribute of any module (`posix.system`, `builtins.eval`, `subprocess.Popen`) and REDUCE calls it with arguments
the sender chose, so `pickle.loads(request.body)` hands a shell to anyone who can reach the port. The trainers'
reward-server clients only ever send pickles of builtin containers, strings, numbers and PIL images, so this
module accepts exactly that and nothing else:

- `find_class` resolves a short allow-list and raises `RefusedGlobal` naming `module.name` for anything else, at
  the opcode that names the global, so nothing it would have built ever exists;
- the allow-list: `builtins.set` / `builtins.frozenset` and `_codecs.encode` restricted to latin-1 (how protocols
  2-3 encode sets and bytes), and the PIL classes `pickle.dumps(image)` names on Pillow 13 (`PIL.Image.Image` for
  `Image.fromarray` / `.resize()` / `.convert()` results, `PIL.PngImagePlugin.PngImageFile`,
  `PIL.JpegImagePlugin.JpegImageFile`, `PIL.MpoImagePlugin.MpoImageFile` for `Image.open` of PNG / JPEG files);
- those PIL names resolve to `PickledImage`, a placeholder that only records the state. PIL's own `__setstate__`
  allocates `mode x size` before it looks at the bytes (a 100-byte pickle could ask for a 10^10-pixel image), so the
  state is checked here first (mode allow-list, width, height, pixel limit, exact byte count, palette) and only then
  turned into an image by `PickledImage.to_image` with `Image.frombytes`.

Protocol 0 and 1 pickles reconstruct objects through `copyreg._reconstructor`, which is refused; every Python 3
default protocol (3-5) and protocol 2 are accepted. The size of the body is bounded before unpickling starts;
pixel data arrives raw in the pickle (PIL pickles decoded pixels), so every mode allowed here costs at least one
body byte per pixel and the decoded images stay within a few times the body size.
"""
from __future__ import annotations

import _codecs
import io
import pickle
from typing import Any

from PIL import Image

__all__ = ["PickleRejected", "RefusedGlobal", "PickledImage", "safe_loads", "IMAGE_GLOBALS"]

# Bytes per pixel of the modes accepted; "1", "I", "F" and the 16-bit modes are refused (RL samplers send RGB).
_MODE_BYTES = {"L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4}
IMAGE_GLOBALS = frozenset({("PIL.Image", "Image"), ("PIL.PngImagePlugin", "PngImageFile"),
                           ("PIL.JpegImagePlugin", "JpegImageFile"), ("PIL.MpoImagePlugin", "MpoImageFile")})


class PickleRejected(ValueError):
    """The body is not a pickle this server reads (malformed, too large, or an image state out of bounds)."""


class RefusedGlobal(PickleRejected):
    """The pickle names a global outside the allow-list; `name` is `module.qualname` as the pickle spelled it."""

    def __init__(self, name: str, hint: str = ""):
        self.name = name
        super().__init__(f"refused global {name}: only builtin containers, scalars and PIL images are accepted"
                         + (f" ({hint})" if hint else ""))


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as protocol 2 uses it for bytes (`encode(str, 'latin1')`); any other codec is refused so a
    pickle cannot reach the codec registry."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedGlobal("_codecs.encode", f"only encode(str, 'latin1') is allowed, got encoding {encoding!r}")
    return _codecs.encode(text, encoding, errors)


# Protocol 2 spells builtins the Python 2 way (`__builtin__`); the default find_class maps it, so this one does too.
_SAFE_CALLABLES = {(module, "set"): set for module in ("builtins", "__builtin__")}
_SAFE_CALLABLES |= {(module, "frozenset"): frozenset for module in ("builtins", "__builtin__")}
_SAFE_CALLABLES[("_codecs", "encode")] = _latin1_encode


class PickledImage:
    """A PIL image's pickled state, checked but not yet built. `to_image()` builds it once (the same placeholder
    object stands for every reference the pickle memoised, e.g. `[image] * 12`)."""

    max_pixels = 0  # the per-load subclass sets both
    origin = "PIL image"

    def __new__(cls, *args):
        if args:  # pickle.dumps(image) passes no constructor arguments
            raise PickleRejected(f"{cls.origin}: unexpected constructor arguments in the pickle")
        return super().__new__(cls)

    def __setstate__(self, state) -> None:
        # Image.__getstate__: [info, mode, size, palette, data] (+ filename from ImageFile, ignored)
        if not isinstance(state, list) or len(state) < 5:
            raise PickleRejected(f"{self.origin}: image state is not [info, mode, size, palette, data]")
        info, mode, size, palette, data = state[:5]
        if not isinstance(info, dict):
            raise PickleRejected(f"{self.origin}: image info is {type(info).__name__}, not a dict")
        if mode not in _MODE_BYTES:
            raise PickleRejected(f"{self.origin}: image mode {mode!r} is not accepted "
                                 f"(accepted: {', '.join(sorted(_MODE_BYTES))})")
        if (not isinstance(size, tuple) or len(size) != 2
                or not all(type(v) is int and v > 0 for v in size)):
            raise PickleRejected(f"{self.origin}: image size {size!r} is not (width, height) positive ints")
        width, height = size
        if width * height > self.max_pixels:
            raise PickleRejected(f"{self.origin}: image of {width}x{height} = {width * height} pixels exceeds the "
                                 f"limit of {self.max_pixels} pixels")
        if not isinstance(data, bytes) or len(data) != width * height * _MODE_BYTES[mode]:
            got = len(data) if isinstance(data, bytes) else type(data).__name__
            raise PickleRejected(f"{self.origin}: {mode} image of {width}x{height} needs "
                                 f"{width * height * _MODE_BYTES[mode]} bytes of pixels, got {got}")
        if palette is not None and (mode not in ("P", "PA") or not isinstance(palette, list)
                                    or len(palette) % 3 or len(palette) > 768
                                    or not all(type(v) is int and 0 <= v <= 255 for v in palette)):
            raise PickleRejected(f"{self.origin}: image palette is not up to 256 RGB triples of a P/PA image")
        self.mode, self.size, self.palette, self.data = mode, size, palette, data
        self._image = None

    def to_image(self) -> Image.Image:
        if not hasattr(self, "data"):  # NEWOBJ without BUILD: a class object, not an image
            raise PickleRejected(f"{self.origin}: image without state")
        if self._image is None:
            image = Image.frombytes(self.mode, self.size, self.data)
            if self.palette:
                image.putpalette(self.palette)
            self._image = image
        return self._image


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, max_pixels: int):
        super().__init__(io.BytesIO(data))
        self._images: dict[tuple[str, str], type] = {}
        self._max_pixels = max_pixels

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[key]
        if key in IMAGE_GLOBALS:
            if key not in self._images:
                self._images[key] = type("PickledImage", (PickledImage,),
                                         {"max_pixels": self._max_pixels, "origin": f"{module}.{name}"})
            return self._images[key]
        hint = ("protocol 0/1 pickles are not accepted; use protocol 2 or later (Python's default)"
                if name == "_reconstructor" and module in ("copyreg", "copy_reg") else "")
        raise RefusedGlobal(f"{module}.{name}", hint)

    def persistent_load(self, pid):
        raise PickleRejected("persistent ids are not accepted")


def safe_loads(data: bytes, *, max_bytes: int, max_pixels: int) -> Any:
    """Unpickle `data` with the allow-list above. Images come back as `PickledImage` (call `to_image()`), already
    checked against `max_pixels` each. Raises `RefusedGlobal` for a global outside the allow-list and
    `PickleRejected` for an oversized body, a malformed pickle or an image state out of bounds."""
    if len(data) > max_bytes:
        raise PickleRejected(f"request body of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return _RestrictedUnpickler(data, max_pixels).load()
    except PickleRejected:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        # What a malformed or hostile opcode stream raises inside the C unpickler; nothing from the allow-list
        # runs code, so these are all "not a pickle we read".
        raise PickleRejected(f"not a readable pickle: {type(e).__name__}: {e}") from None
