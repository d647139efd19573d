"""RewardClient: score over HTTP against `jrm serve`, for RL trainers (connection reuse, timeouts, retries).

    with RewardClient("http://127.0.0.1:8000") as client:            # JRM_API_KEY is sent when set
        rewards = client.score_group(source, "make the sky red", candidates)   # np.ndarray (G,)
        rewards = client.score(sources, instructions, edited)                  # np.ndarray (N,)
    reward_fn = flow_grpo_reward(client)   # Flow-GRPO's shape: reward_fn(images, prompts, metadata)

The default "binary" format resizes each image to the server's image size here (the same bicubic resize the
server would do, so rewards are identical) and sends raw uint8 arrays: no PNG encode or decode on either side.
"json" sends base64 PNG (or the bytes of a PNG/JPEG file as they are). A 503 (queue full or a replica shutting
down), a proxy's 500/502 for a replica that died, and a dropped connection are retried with exponential
back-off (scoring is idempotent); any other error
raises RewardServerError with the server's message, which names the field at fault.
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np
from PIL import Image

__all__ = ["RewardClient", "RewardServerError", "flow_grpo_reward"]

BINARY = "application/x-jrm-arrays"  # jrm_engine/serve/payload.py (not imported: the client needs no fastapi)


class RewardServerError(RuntimeError):
    def __init__(self, status: int | None, message: str):
        super().__init__(f"reward server: {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status


class RewardClient:
    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 120.0, retries: int = 6,
                 backoff_s: float = 0.25, max_backoff_s: float = 8.0, format: str = "binary"):
        if format not in ("binary", "json"):
            raise ValueError(f"format must be 'binary' or 'json', got {format!r}")
        api_key = api_key or os.environ.get("JRM_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.retries, self.backoff_s, self.max_backoff_s, self.format = retries, backoff_s, max_backoff_s, format
        self.model: str | None = None  # the engine hash of the last answer
        self._image_size: int | None = None

    # ---- API ------------------------------------------------------------------------------------------------
    def score(self, sources: Sequence[Any], instructions: Sequence[str], edited: Sequence[Any]) -> np.ndarray:
        if not len(sources) == len(instructions) == len(edited):
            raise ValueError(f"sources, instructions and edited differ in length: "
                             f"{len(sources)}, {len(instructions)}, {len(edited)}")
        if self.format == "binary":
            s, e = self._arrays(sources), self._arrays(edited)
            header = {"instructions": list(instructions), "sources": list(s.shape), "edited": list(e.shape)}
            return self._post("/v1/score", binary=(header, [s, e]))
        items = [{"source": _b64(a), "instruction": t, "edited": _b64(b)}
                 for a, t, b in zip(sources, instructions, edited)]
        return self._post("/v1/score", body={"items": items})

    def score_group(self, source: Any, instruction: str, candidates: Sequence[Any]) -> np.ndarray:
        if self.format == "binary":
            s, c = self._arrays([source])[0], self._arrays(candidates)
            header = {"instruction": instruction, "source": list(s.shape), "candidates": list(c.shape)}
            return self._post("/v1/score_group", binary=(header, [s, c]))
        body = {"source": _b64(source), "instruction": instruction, "candidates": [_b64(c) for c in candidates]}
        return self._post("/v1/score_group", body=body)

    def info(self) -> dict:
        return self._request("GET", "/v1/info").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport ------------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict | None = None, binary: tuple | None = None) -> np.ndarray:
        if binary is not None:
            kwargs = {"content": encode_binary(*binary), "headers": {"Content-Type": BINARY}}
        else:
            kwargs = {"json": body}
        answer = self._request("POST", path, **kwargs).json()
        self.model = answer["model"]
        return np.asarray(answer["rewards"], dtype=np.float32)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.TransportError,) as e:  # refused, reset, dropped mid-answer: a replica went away
                if last or isinstance(e, httpx.TimeoutException):
                    raise RewardServerError(None, f"{method} {path}: {type(e).__name__}: {e}") from e
            else:
                if response.status_code < 400:
                    return response
                if not _retriable(response) or last:
                    raise RewardServerError(response.status_code, _error_text(response))
                delay = max(delay, _retry_after(response))
            time.sleep(min(delay, self.max_backoff_s))
            delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _arrays(self, images: Sequence[Any]) -> np.ndarray:
        from jrm_engine.vision import load_image
        if self._image_size is None:
            self._image_size = int(self.info()["image_size"])
        return np.stack([load_image(_plain(im), self._image_size, name=f"images[{i}]") for i, im in enumerate(images)])


def encode_binary(header: dict, arrays: list[np.ndarray]) -> bytes:
    """The binary body (format: jrm_engine/serve/payload.py): header length, JSON header, uint8 arrays."""
    head = json.dumps(header).encode()
    return b"".join([struct.pack("<I", len(head)), head] + [np.ascontiguousarray(a, np.uint8).tobytes() for a in arrays])


def _plain(image: Any):
    """Torch tensors (C, H, W) float in [0, 1], as diffusion samplers return them, to (H, W, 3) uint8."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (3, 4):
            image = image.transpose(1, 2, 0)
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return image


def _b64(image: Any) -> str:
    if isinstance(image, (str, Path)):
        image = Path(image).read_bytes()
    if not isinstance(image, bytes):
        image = _plain(image)
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
        buffer = io.BytesIO()
        pil.convert("RGB").save(buffer, format="PNG", compress_level=1)
        image = buffer.getvalue()
    return base64.b64encode(image).decode("ascii")


def _retriable(response: httpx.Response) -> bool:
    """503 (queue full, replica shutting down), and a 500/502 that is not the app's own JSON error: that one came
    from a proxy in front of a replica that died mid-request (Ray Serve's answers 500 in plain text). The app's
    own 500 (the engine failed on the batch) is not retried: the same batch would fail again."""
    if response.status_code == 503:
        return True
    return response.status_code in (500, 502) and not response.headers.get("content-type", "").startswith(
        "application/json")


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['field']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def flow_grpo_reward(client: RewardClient, source_key: str = "source_image"):
    """A reward function in Flow-GRPO's shape: `reward_fn(images, prompts, metadata) -> (scores, info)`.

    `images` are the sampled edits (a (B, C, H, W) tensor in [0, 1], arrays or PIL images), `prompts` the edit
    instructions and `metadata[i][source_key]` the source image of sample i. Consecutive samples with the same
    source object and prompt (the G candidates of one prompt, as Flow-GRPO lays groups out) go in one
    /v1/score_group request, so the server encodes the source once per group."""

    def reward_fn(images, prompts, metadata):
        if not len(images) == len(prompts) == len(metadata):
            raise ValueError(f"images, prompts and metadata differ in length: {len(images)}, {len(prompts)}, "
                             f"{len(metadata)}")
        sources = []
        for i, meta in enumerate(metadata):
            if not isinstance(meta, dict) or source_key not in meta:
                raise ValueError(f"metadata[{i}]: no {source_key!r} (the source image this sample edits)")
            sources.append(meta[source_key])
        scores, start, groups = [], 0, 0
        while start < len(images):
            end = start + 1
            while end < len(images) and sources[end] is sources[start] and prompts[end] == prompts[start]:
                end += 1
            scores.extend(client.score_group(sources[start], prompts[start], list(images[start:end])).tolist())
            start, groups = end, groups + 1
        return scores, {"model": client.model, "groups": groups}

    return reward_fn
