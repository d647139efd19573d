"""The Flow-GRPO / EditScore reward-server protocol on `jrm serve`: a trainer changes only its reward URL.

Those trainers' reward clients (EditScore's OmniGen2-RL `reward_client_edit.RewardClient`, the Flow-GRPO-style
`requests` sessions) POST one `pickle.dumps(dict)` per call, with `Content-Type: application/octet-stream` or none:

    input_images   list (N) of lists of PIL images: the source image of each candidate (JRM takes exactly one)
    output_image   list (N) of PIL images: the candidates (edited images)
    meta_datas     list (N) of JSON strings (dicts are accepted too), each carrying "instruction" (and "tag")
    server_type    optional str ("vlm", "geneval"...): checked to be a string; it selects nothing here

and read `pickle.loads(response.content)` on a 200. The answer is a pickled dict of plain Python values, in
request order (N entries each unless said otherwise):

    rewards               the JRM reward of each candidate, raw (the model's Bradley-Terry logit). The trainers
                          normalise per prompt themselves (Flow-GRPO's PerPromptStatTracker, EditScore's
                          process_grpo_rewards), so the server must not: normalising twice would change their
                          advantages' scale.
    strict_rewards        the same numbers. Flow-GRPO's GenEval server separates a strict from a lenient pass;
                          EditScore's server, a continuous scorer like JRM, sets strict_reward = reward.
    scores                sigmoid(reward) in (0, 1): the bounded view both servers' `scores` give (GenEval's partial
                          credit, EditScore's pass mark), monotone in the reward, for logging.
    group_rewards         {tag: [N floats]}: per tag (meta_datas[i]["tag"], "jrm" when absent) the reward of each
                          candidate of that tag and -10.0 for the others, as Flow-GRPO's GenEval server answers (its
                          trainer masks -10.0 to log per-tag means and concatenates these lists across calls).
    group_strict_rewards  the same from strict_rewards.
    reasoning             (EditScore) one line per candidate: the reward and the candidate's rank in its group; the
                          scoring engine emits no explanation text.
    meta_data             (EditScore) each candidate's parsed meta dict plus "original_index" (as EditScore's proxy
                          adds), "group" (index of its group in this call) and "group_normalised_reward"
                          ((reward - group mean) / (group std + 1e-4), Flow-GRPO's GRPO advantage over this call's
                          group only: 0.0 for a group of one).

Grouping: candidates whose source image has the same pixels (mode, size, bytes) and whose instruction is the same
are one group, scored with `ServeEngine.score_group` (the source encoded once); every group of the call is in
flight at once, so the C++ runtime batches across them. EditScore's proxy already sends all candidates of one
instruction to one server, so a group of 12 arrives whole.

Errors: the body is unpickled only by `safe_pickle.safe_loads` (why: see there). The status codes follow what these
clients do with them: Flow-GRPO's sessions retry `status_forcelist=[500]` (and 503 with Retry-After, urllib3's
default) up to 1000 times, EditScore's client retries any non-200 a few times and then gives up. So a request the
server will never accept is never a 500: a refused or unreadable pickle is 400, a body past the limit 413, a schema
or limit violation 422 (as the rest of `jrm serve`); a full runtime queue is 503 with Retry-After, a timeout 504,
and only an engine failure is 500 (retrying may succeed). Neither client reads an error body, so it is the JSON
`{"error": {"field", "message", "status"}}` of every `jrm serve` endpoint, for logs and humans (`response.text`);
the field names the key and index at fault, e.g. `meta_datas[5]`.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from .errors import BadInput, BodyTooLarge, RequestError
from .safe_pickle import PickledImage, PickleRejected, RefusedGlobal, safe_loads

__all__ = ["RLBatch", "RefusedPickle", "parse_request", "score_batch", "build_response", "make_router", "rl_router"]

ENDPOINT = "rl_protocol"  # the metrics label
DEFAULT_PATH = "/"  # where the trainers POST (their reward URL has no path)
DEFAULT_TAG = "jrm"
OTHER_TAG = -10.0  # Flow-GRPO's placeholder for "not this tag" in group_rewards
STD_EPS = 1e-4     # Flow-GRPO's PerPromptStatTracker: (r - mean) / (std + 1e-4)


class RefusedPickle(RequestError):
    """The body is not a pickle this server reads: a global outside the allow-list, or malformed (400)."""

    status = 400


@dataclass
class RLBatch:
    """One parsed request: N candidates and their groups (lists of candidate indices, in first-seen order)."""

    sources: list[Image.Image]
    edited: list[Image.Image]
    instructions: list[str]
    metas: list[dict]
    groups: list[list[int]] = field(default_factory=list)


def _image(value: Any, where: str) -> PickledImage:
    if not isinstance(value, PickledImage):
        raise BadInput(where, f"expected a PIL image, got {type(value).__name__}")
    return value


def _pixels_key(image: PickledImage, cache: dict[int, bytes]) -> bytes:
    # The same placeholder stands for every memoised reference ([source] * 12): hash each object once.
    if id(image) not in cache:
        digest = hashlib.blake2b(image.data, digest_size=16)
        digest.update(f"{image.mode}{image.size}".encode())
        cache[id(image)] = digest.digest()
    return cache[id(image)]


def _meta(value: Any, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadInput(where, f"not a JSON string: {e}") from None
    if not isinstance(value, dict):
        raise BadInput(where, f"expected a JSON object carrying \"instruction\", got {type(value).__name__}")
    instruction = value.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadInput(where, "no \"instruction\"" if instruction is None
                       else f"\"instruction\" must be a non-empty string, got {instruction!r}")
    tag = value.get("tag", DEFAULT_TAG)
    if not isinstance(tag, str):
        raise BadInput(where, f"\"tag\" must be a string, got {type(tag).__name__}")
    return value


def _list(data: dict, key: str) -> list:
    if key not in data:
        raise BadInput(key, "missing; the request needs input_images, output_image and meta_datas")
    value = data[key]
    if not isinstance(value, (list, tuple)):
        raise BadInput(key, f"expected a list, got {type(value).__name__}")
    if not value:
        raise BadInput(key, "empty list")
    return list(value)


def parse_request(body: bytes, *, max_body_bytes: int, max_pixels: int, max_candidates: int) -> RLBatch:
    """Unpickle (restricted) and validate one request; every error is a RequestError naming the key and index."""
    try:
        data = safe_loads(body, max_bytes=max_body_bytes, max_pixels=max_pixels)
    except RefusedGlobal as e:
        raise RefusedPickle("body", str(e)) from None
    except PickleRejected as e:
        if len(body) > max_body_bytes:
            raise BodyTooLarge("body", str(e)) from None
        raise RefusedPickle("body", str(e)) from None
    if not isinstance(data, dict):
        raise BadInput("body", f"expected a pickled dict with input_images, output_image and meta_datas, got "
                               f"{type(data).__name__}")
    inputs, outputs, metas = (_list(data, key) for key in ("input_images", "output_image", "meta_datas"))
    if not len(inputs) == len(outputs) == len(metas):
        raise BadInput("body", f"one entry per candidate is needed: output_image has {len(outputs)}, input_images "
                               f"{len(inputs)}, meta_datas {len(metas)}")
    if len(outputs) > max_candidates:
        raise BadInput("output_image", f"{len(outputs)} candidates exceed the limit of {max_candidates} per request")
    if not isinstance(data.get("server_type", ""), str):
        raise BadInput("server_type", f"expected a string, got {type(data['server_type']).__name__}")

    sources, edited, parsed, groups = [], [], [], {}
    keys: dict[int, bytes] = {}
    for i, (source_list, output, meta) in enumerate(zip(inputs, outputs, metas)):
        if not isinstance(source_list, (list, tuple)):
            raise BadInput(f"input_images[{i}]", f"expected a list of one PIL image, got {type(source_list).__name__}")
        if len(source_list) != 1:
            raise BadInput(f"input_images[{i}]", f"{len(source_list)} images; JRM scores an edit against exactly "
                                                 f"one source image")
        source = _image(source_list[0], f"input_images[{i}][0]")
        candidate = _image(output, f"output_image[{i}]")
        meta = _meta(meta, f"meta_datas[{i}]")
        groups.setdefault((_pixels_key(source, keys), meta["instruction"]), []).append(i)
        sources.append(source.to_image())
        edited.append(candidate.to_image())
        parsed.append(meta)
    return RLBatch(sources, edited, [m["instruction"] for m in parsed], parsed, list(groups.values()))


async def score_batch(engine, batch: RLBatch) -> np.ndarray:
    """Rewards (N,) float32 in request order; one `engine.score_group` per group, all in flight together."""

    async def one(indices: list[int]) -> np.ndarray:
        first = indices[0]
        try:
            return await engine.score_group(batch.sources[first], batch.instructions[first],
                                            [batch.edited[i] for i in indices])
        except BadInput as e:  # the engine names its own argument; the client needs its request's indices
            raise BadInput(f"output_image{indices}", e.message) from None

    results = await asyncio.gather(*(one(g) for g in batch.groups))
    rewards = np.empty(len(batch.edited), dtype=np.float32)
    for indices, values in zip(batch.groups, results):
        rewards[indices] = values
    return rewards


def build_response(batch: RLBatch, rewards: np.ndarray) -> dict:
    """The response dict (plain Python floats, strings, lists and dicts) for rewards in request order."""
    values = [float(r) for r in rewards]
    n = len(values)
    normalised, group_of, rank = [0.0] * n, [0] * n, [0] * n
    for g, indices in enumerate(batch.groups):
        group = np.asarray([values[i] for i in indices], dtype=np.float64)
        z = (group - group.mean()) / (group.std() + STD_EPS)
        order = np.argsort(-group, kind="stable")
        for position, k in enumerate(order):
            rank[indices[k]] = position + 1
        for k, i in enumerate(indices):
            normalised[i], group_of[i] = float(z[k]), g
    tags = [m.get("tag", DEFAULT_TAG) for m in batch.metas]
    per_tag = {tag: [v if t == tag else OTHER_TAG for v, t in zip(values, tags)] for tag in dict.fromkeys(tags)}
    return {
        "scores": [1.0 / (1.0 + math.exp(-v)) for v in values],
        "rewards": values,
        "strict_rewards": list(values),
        "group_rewards": per_tag,
        "group_strict_rewards": {tag: list(v) for tag, v in per_tag.items()},
        "reasoning": [f"JRM reward {v:.6g}; rank {rank[i]} of {len(batch.groups[group_of[i]])} in its group "
                      f"(same source and instruction)" for i, v in enumerate(values)],
        "meta_data": [{**meta, "original_index": i, "group": group_of[i], "group_normalised_reward": normalised[i]}
                      for i, meta in enumerate(batch.metas)],
    }


def make_router(engine, settings, path: str = DEFAULT_PATH):
    """The APIRouter `create_app(..., routers=[...])` mounts (`rl_router(path)` binds another path): POST `path`
    answers the protocol above. The app's guard has already bounded the body (`settings.max_body_bytes`) and
    checked the bearer token."""
    router = APIRouter()

    @router.post(path, tags=["rl-protocol"], summary="Flow-GRPO / EditScore reward-server protocol (pickled)")
    async def rl_protocol(request: Request):
        """Body: `pickle.dumps({"input_images", "output_image", "meta_datas", "server_type"})`, unpickled with an
        allow-list (builtin containers and scalars, PIL images). Answer: pickled `{"scores", "rewards",
        "strict_rewards", "group_rewards", "group_strict_rewards", "reasoning", "meta_data"}`. Prefer
        /v1/score_group for new clients: JSON or raw arrays, no pickle."""
        metrics = request.app.state.metrics
        try:
            with metrics.timed(metrics.latency, ENDPOINT):
                with metrics.timed(metrics.decode, ENDPOINT, "pickle"):
                    batch = await engine.offload(functools.partial(
                        parse_request, max_body_bytes=settings.max_body_bytes, max_pixels=settings.max_pixels,
                        max_candidates=settings.max_candidates), await request.body())
                rewards = await score_batch(engine, batch)
                answer = pickle.dumps(build_response(batch, rewards), protocol=pickle.DEFAULT_PROTOCOL)
        except RequestError as e:
            metrics.requests.labels(ENDPOINT, str(e.status)).inc()
            raise
        metrics.requests.labels(ENDPOINT, "200").inc()
        metrics.candidates.labels(ENDPOINT).inc(len(rewards))
        return Response(answer, media_type="application/octet-stream")

    return router


def rl_router(path: str = DEFAULT_PATH):
    """A `create_app` router factory mounting the protocol at `path` (`jrm serve --rl-path`)."""
    if not path.startswith("/"):
        raise ValueError(f"--rl-path must start with '/', got {path!r}")
    return lambda engine, settings: make_router(engine, settings, path)
