"""Request bodies of /v1/score and /v1/score_group, in two formats, decoded into arrays with every limit checked.

JSON (`application/json`): images as base64 PNG or JPEG strings (a `data:image/...;base64,` prefix is accepted).

    /v1/score        {"items": [{"source": B64, "instruction": "...", "edited": B64}, ...]}
    /v1/score_group  {"source": B64, "instruction": "...", "candidates": [B64, ...]}

Binary (`application/x-jrm-arrays`, what `RewardClient` sends by default): raw uint8 RGB arrays, no image codec
on either side. The body is a 4-byte little-endian header length L, L bytes of a UTF-8 JSON header giving the
arrays' shapes, then the arrays' bytes back to back in C order, in the header's order:

    /v1/score        {"instructions": [...N], "sources": [N, H, W, 3], "edited": [N, H, W, 3]}
    /v1/score_group  {"instruction": "...", "source": [H, W, 3], "candidates": [G, H, W, 3]}

Images of any size are resized to the engine's (as `Scorer` does); sending them at `/v1/info`'s `image_size`
skips that too. Never pickle: unpickling runs code the sender chose.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, ValidationError

from .errors import BadInput
from .settings import ServeSettings

BINARY = "application/x-jrm-arrays"
IMAGE_FORMATS = ("PNG", "JPEG")


class ScoreItem(BaseModel):
    source: str = Field(description="base64 PNG or JPEG: the source image")
    instruction: str = Field(description="the edit instruction")
    edited: str = Field(description="base64 PNG or JPEG: the edited image to score")


class ScoreRequest(BaseModel):
    items: list[ScoreItem]


class GroupRequest(BaseModel):
    source: str = Field(description="base64 PNG or JPEG: the source image, encoded once for the group")
    instruction: str
    candidates: list[str] = Field(description="base64 PNG or JPEG: the G candidate edits")


class ScoreResponse(BaseModel):
    rewards: list[float] = Field(description="one reward per item or candidate, in request order")
    model: str = Field(description="the engine's hash: which model scored these")


# ---- JSON ----------------------------------------------------------------------------------------------------
def decode_image(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8; the pixel count is read from the header and checked before decoding, so
    a small file that expands to gigabytes (a decompression bomb) is refused without being decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(field, "not a PNG or JPEG image") from e
    width, height = image.size
    if width * height > max_pixels:
        raise BadInput(field, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadInput(field, f"cannot decode the {image.format} image ({e})") from e


def _b64_image(text: str, field: str, max_pixels: int) -> np.ndarray:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInput(field, f"not valid base64 ({e})") from e
    return decode_image(data, field, max_pixels)


def _parse_json(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadInput(field, f"{first['msg']} (body is not a valid {model.__name__})") from e


def _check_count(n: int, field: str, settings: ServeSettings) -> None:
    if n > settings.max_candidates:
        raise BadInput(field, f"{n} exceeds the limit of {settings.max_candidates} per request")


def _check_instruction(text: Any, field: str) -> str:
    if not isinstance(text, str):
        raise BadInput(field, f"expected a string, got {type(text).__name__}")
    return text


# ---- binary --------------------------------------------------------------------------------------------------
def _split_binary(body: bytes) -> tuple[dict, memoryview]:
    if len(body) < 4:
        raise BadInput("body", f"{len(body)} bytes: too short for the {BINARY} header length")
    (length,) = struct.unpack_from("<I", body)
    if length > len(body) - 4:
        raise BadInput("header", f"header length {length} exceeds the {len(body) - 4} bytes after it")
    try:
        header = json.loads(bytes(body[4:4 + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput("header", f"not UTF-8 JSON ({e})") from e
    if not isinstance(header, dict):
        raise BadInput("header", f"expected a JSON object, got {type(header).__name__}")
    if header.get("dtype", "uint8") != "uint8":
        raise BadInput("header.dtype", f"{header['dtype']!r}: only uint8 RGB arrays are accepted")
    return header, memoryview(body)[4 + length:]


def _shape(header: dict, name: str, ndim: int, max_pixels: int) -> tuple[int, ...]:
    shape = header.get(name)
    if not (isinstance(shape, list) and len(shape) == ndim
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise BadInput(f"header.{name}", f"expected a shape of {ndim} positive integers, got {shape!r}")
    if shape[-1] != 3:
        raise BadInput(f"header.{name}", f"shape {shape}: the last dimension must be 3 (RGB)")
    if shape[-3] * shape[-2] > max_pixels:
        raise BadInput(f"header.{name}", f"{shape[-2]}x{shape[-3]} = {shape[-3] * shape[-2]} pixels exceeds the "
                                         f"limit of {max_pixels}")
    return tuple(shape)


def _arrays(data: memoryview, shapes: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    sizes = [int(np.prod(s)) for _, s in shapes]
    if sum(sizes) != len(data):
        raise BadInput("body", f"{len(data)} array bytes after the header, the shapes "
                               f"{', '.join(f'{n} {list(s)}' for n, s in shapes)} need {sum(sizes)}")
    out, offset = [], 0
    for (_, shape), size in zip(shapes, sizes):
        out.append(np.frombuffer(data, dtype=np.uint8, count=size, offset=offset).reshape(shape))
        offset += size
    return out


# ---- the two requests ------------------------------------------------------------------------------------------
def decode_score(body: bytes, content_type: str, settings: ServeSettings) -> list[tuple[np.ndarray, str, np.ndarray]]:
    """A /v1/score body -> [(source, instruction, edited)] with (H, W, 3) uint8 images."""
    if _is_binary(content_type):
        header, data = _split_binary(body)
        texts = header.get("instructions")
        if not isinstance(texts, list) or not texts:
            raise BadInput("header.instructions", "expected a non-empty list of strings")
        _check_count(len(texts), "header.instructions", settings)
        texts = [_check_instruction(t, f"header.instructions[{i}]") for i, t in enumerate(texts)]
        shapes = [(n, _shape(header, n, 4, settings.max_pixels)) for n in ("sources", "edited")]
        for name, shape in shapes:
            if shape[0] != len(texts):
                raise BadInput(f"header.{name}", f"{shape[0]} images for {len(texts)} instructions")
        sources, edited = _arrays(data, shapes)
        return list(zip(sources, texts, edited))
    request = _parse_json(ScoreRequest, body)
    if not request.items:
        raise BadInput("items", "empty list")
    _check_count(len(request.items), "items", settings)
    return [(_b64_image(it.source, f"items[{i}].source", settings.max_pixels), it.instruction,
             _b64_image(it.edited, f"items[{i}].edited", settings.max_pixels)) for i, it in enumerate(request.items)]


def decode_group(body: bytes, content_type: str, settings: ServeSettings) -> tuple[np.ndarray, str, list[np.ndarray]]:
    """A /v1/score_group body -> (source, instruction, [candidate]) with (H, W, 3) uint8 images."""
    if _is_binary(content_type):
        header, data = _split_binary(body)
        text = _check_instruction(header.get("instruction"), "header.instruction")
        shapes = [("source", _shape(header, "source", 3, settings.max_pixels)),
                  ("candidates", _shape(header, "candidates", 4, settings.max_pixels))]
        _check_count(shapes[1][1][0], "header.candidates", settings)
        source, candidates = _arrays(data, shapes)
        return source, text, list(candidates)
    request = _parse_json(GroupRequest, body)
    if not request.candidates:
        raise BadInput("candidates", "empty list")
    _check_count(len(request.candidates), "candidates", settings)
    return (_b64_image(request.source, "source", settings.max_pixels), request.instruction,
            [_b64_image(c, f"candidates[{i}]", settings.max_pixels) for i, c in enumerate(request.candidates)])


def _is_binary(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    if kind == BINARY:
        return True
    if kind in ("application/json", ""):
        return False
    raise BadInput("content-type", f"{content_type!r}: send application/json or {BINARY}")

