"""The Flow-GRPO / EditScore reward-server protocol on `jrm serve` (jrm_engine/serve/rl_protocol.py, safe_pickle.py).

A client written from the protocol's schema (pickled dict of PIL images and JSON meta strings, POSTed with
`requests` the way those trainers do) talks to a real uvicorn server on 127.0.0.1 over the tiny model's runtime
package (the session's AOTInductor package, shared with test_export / test_scoring_runtime). The oracle is the
torch backend's in-process score_group on the same checkpoint.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from jrm_engine.serve import ServeEngine, ServeSettings, create_app
from jrm_engine.serve.rl_protocol import rl_router
from jrm_engine.serve.safe_pickle import PickleRejected, RefusedGlobal, safe_loads

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import runtime_package  # noqa: F401  (fixture)

SIZE = 56  # the tiny model's image size: nothing is resized, so every byte sent is a byte scored
PROMPTS, GROUP = 48, 12
# 48 distinct instructions inside the exported 16-token bucket, from the tiny tokenizer's words
INSTRUCTIONS = [f"{verb} the {color} {shape}{tail}" for verb in ("make", "remove", "add", "change")
                for color in ("red", "blue", "green") for shape in ("circle", "square") for tail in ("", " bigger")]


def random_pixels(rng) -> np.ndarray:
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def file_backed(pixels: np.ndarray, fmt: str) -> Image.Image:
    """What `Image.open` of a sampler's saved PNG/JPEG gives (a PngImageFile / JpegImageFile)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image.load()
    return image


def trainer_batch(prompts=PROMPTS, group=GROUP, seed=0):
    """A Flow-GRPO / EditScore-style call: `prompts` sources x `group` candidates, the candidates of one prompt
    adjacent, sources repeated as one object per prompt ([source] * group, as EditScore's client builds them) for
    even prompts and as separate equal-pixel PNG images for odd ones; candidates PNG-, JPEG- or array-backed."""
    rng = np.random.default_rng(seed)
    input_images, output_image, meta_datas = [], [], []
    for p in range(prompts):
        pixels = random_pixels(rng)
        shared = file_backed(pixels, "PNG")
        for k in range(group):
            input_images.append([shared if p % 2 == 0 else file_backed(pixels, "PNG")])
            kind = k % 3
            candidate = random_pixels(rng)
            output_image.append(file_backed(candidate, "PNG") if kind == 0 else
                                file_backed(candidate, "JPEG") if kind == 1 else Image.fromarray(candidate))
            meta_datas.append(json.dumps({"instruction": INSTRUCTIONS[p % len(INSTRUCTIONS)],
                                          "tag": ["edit", "style"][p % 2]}))
    return {"input_images": input_images, "output_image": output_image, "meta_datas": meta_datas,
            "server_type": "vlm"}


class LiveServer:
    """uvicorn on a loopback socket in a thread; stops (and closes the engine) on exit."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


@pytest.fixture(scope="module")
def server(runtime_package):  # noqa: F811
    settings = ServeSettings(max_candidates=PROMPTS * GROUP, max_body_bytes=64 << 20, max_pixels=SIZE * SIZE * 4)
    engine = ServeEngine.load(runtime_package, backend="runtime", settings=settings, max_batch=6, max_delay_ms=5,
                              max_queue=2048)
    with LiveServer(create_app(engine, settings, routers=[rl_router("/")])) as live:
        live.engine = engine
        yield live


def post(server, payload, raw: bytes | None = None):
    """As the trainers' clients post: pickled dict, octet-stream, to the bare URL."""
    data = raw if raw is not None else pickle.dumps(payload)
    return requests.post(server.url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=300)


def expected_rewards(torch_scorer, batch):  # noqa: F811
    """In-process oracle: one torch score_group per (source pixels, instruction) run of adjacent candidates."""
    out = []
    n = len(batch["output_image"])
    starts = [i for i in range(n) if i == 0 or batch["meta_datas"][i] != batch["meta_datas"][i - 1]
              or not np.array_equal(np.asarray(batch["input_images"][i][0]),
                                    np.asarray(batch["input_images"][i - 1][0]))] + [n]
    for a, b in zip(starts, starts[1:]):
        instruction = json.loads(batch["meta_datas"][a])["instruction"]
        out.extend(torch_scorer.score_group(np.asarray(batch["input_images"][a][0]), instruction,
                                            [np.asarray(im.convert("RGB")) for im in batch["output_image"][a:b]]))
    return np.asarray(out, dtype=np.float32)


# ---- the schema's client against the live server ---------------------------------------------------------------
def test_trainer_call_equals_in_process_scoring(server, torch_scorer):  # noqa: F811
    batch = trainer_batch()
    groups_before = server.engine.stats()["groups"]
    response = post(server, batch)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    answer = pickle.loads(response.content)  # what the trainers do with a 200
    n = PROMPTS * GROUP
    assert set(answer) == {"scores", "rewards", "strict_rewards", "group_rewards", "group_strict_rewards",
                           "reasoning", "meta_data"}
    rewards = np.asarray(answer["rewards"], dtype=np.float32)
    np.testing.assert_allclose(rewards, expected_rewards(torch_scorer, batch), atol=FP32_TOL, rtol=0)
    assert answer["strict_rewards"] == answer["rewards"] and all(type(r) is float for r in answer["rewards"])
    np.testing.assert_allclose(answer["scores"], 1 / (1 + np.exp(-rewards.astype(np.float64))), rtol=1e-6)
    # Every prompt one group, run through the runtime's group path (source encoded once per chunk).
    assert server.engine.stats()["groups"] > groups_before
    metas = answer["meta_data"]
    assert [m["original_index"] for m in metas] == list(range(n))
    assert [m["group"] for m in metas] == [i // GROUP for i in range(n)]
    for p in range(PROMPTS):
        group = rewards[p * GROUP:(p + 1) * GROUP].astype(np.float64)
        z = [metas[i]["group_normalised_reward"] for i in range(p * GROUP, (p + 1) * GROUP)]
        np.testing.assert_allclose(z, (group - group.mean()) / (group.std() + 1e-4), atol=1e-4)
    # Flow-GRPO's per-tag layout: request-length lists, -10.0 where the candidate has another tag.
    for tag, parity in (("edit", 0), ("style", 1)):
        got = answer["group_rewards"][tag]
        assert len(got) == n and got == answer["group_strict_rewards"][tag]
        assert all((v == answer["rewards"][i]) if (i // GROUP) % 2 == parity else v == -10.0
                   for i, v in enumerate(got))
    assert answer["reasoning"][0].startswith("JRM reward") and "of 12 in its group" in answer["reasoning"][0]


def test_mixed_groups_in_one_call_keep_request_order(server, torch_scorer):  # noqa: F811
    """Candidates of three prompts interleaved, plus a lone candidate: grouped by source pixels + instruction,
    answered in request order."""
    batch = trainer_batch(prompts=3, group=4, seed=5)
    order = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    mixed = {key: [batch[key][i] for i in order] for key in ("input_images", "output_image", "meta_datas")}
    rng = np.random.default_rng(9)
    mixed["input_images"].append([Image.fromarray(random_pixels(rng))])
    mixed["output_image"].append(Image.fromarray(random_pixels(rng)))
    mixed["meta_datas"].append(json.dumps({"instruction": INSTRUCTIONS[0]}))  # same text, another source
    response = post(server, mixed)
    assert response.status_code == 200, response.text
    answer = pickle.loads(response.content)
    want = np.concatenate([expected_rewards(torch_scorer, batch)[order],
                           torch_scorer.score_group(np.asarray(mixed["input_images"][-1][0]), INSTRUCTIONS[0],
                                                    [np.asarray(mixed["output_image"][-1])])])
    np.testing.assert_allclose(answer["rewards"], want, atol=FP32_TOL, rtol=0)
    assert [m["group"] for m in answer["meta_data"]] == [0, 1, 2] * 4 + [3]
    assert answer["meta_data"][-1]["group_normalised_reward"] == 0.0  # a group of one
    assert list(answer["group_rewards"]) == ["edit", "style", "jrm"]  # "jrm": no tag given


# ---- bad requests: clear errors naming the field, never a 500 -------------------------------------------------
def small_batch(n=2):
    batch = trainer_batch(prompts=1, group=n, seed=3)
    return {k: list(v) if isinstance(v, list) else v for k, v in batch.items()}


def _with(**changes):
    batch = small_batch()
    for key, value in changes.items():
        if value is KeyError:
            del batch[key]
        else:
            batch[key] = value
    return batch


BAD_REQUESTS = [
    (lambda: ["not", "a", "dict"], "body", "expected a pickled dict"),
    (lambda: _with(output_image=KeyError), "output_image", "missing"),
    (lambda: _with(output_image=[], input_images=[], meta_datas=[]), "input_images", "empty list"),
    (lambda: _with(meta_datas=small_batch()["meta_datas"][:1]), "body", "meta_datas 1"),
    (lambda: _with(input_images=[[], small_batch()["input_images"][1]]), "input_images[0]", "0 images"),
    (lambda: _with(input_images=[small_batch()["input_images"][0] * 2, small_batch()["input_images"][1]]),
     "input_images[0]", "2 images"),
    (lambda: _with(output_image=[small_batch()["output_image"][0], "edited.png"]), "output_image[1]",
     "expected a PIL image, got str"),
    (lambda: _with(meta_datas=[json.dumps({"instruction": "add the red circle"}), json.dumps({"tag": "x"})]),
     "meta_datas[1]", "no \"instruction\""),
    (lambda: _with(meta_datas=[json.dumps({"instruction": "add the red circle"}), "{not json"]),
     "meta_datas[1]", "not a JSON string"),
    (lambda: _with(meta_datas=[json.dumps({"instruction": "add the red circle"}), json.dumps({"instruction": ""})]),
     "meta_datas[1]", "non-empty string"),
    (lambda: _with(server_type=3), "server_type", "expected a string"),
    (lambda: _with(meta_datas=[json.dumps({"instruction": " ".join(["red"] * 17)})] * 2), "output_image[0, 1]",
     "exceeds the largest text bucket"),
]


@pytest.mark.parametrize("make, field, message", BAD_REQUESTS)
def test_bad_requests_name_the_field(server, make, field, message):
    response = post(server, make())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"], error


def test_limits(server):
    huge = Image.fromarray(np.zeros((SIZE * 3, SIZE * 3, 3), np.uint8))  # 9 x SIZE^2 > max_pixels (4 x SIZE^2)
    response = post(server, _with(output_image=[small_batch()["output_image"][0], huge]))
    assert response.status_code == 400 and "exceeds the limit" in response.json()["error"]["message"]
    too_many = trainer_batch(prompts=PROMPTS + 1, group=GROUP, seed=1)
    response = post(server, too_many)
    assert response.status_code == 422 and "exceed the limit of 576" in response.json()["error"]["message"]


# ---- malicious pickles: refused before anything runs -----------------------------------------------------------
class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


class Outer:
    class Nested:
        """A class that is not an image: its constructor would write the marker."""

        def __init__(self, marker=None):
            if marker:
                open(marker, "w").close()

        def __reduce__(self):
            return Outer.Nested, (str(MARKER_HOLDER[0]),)


MARKER_HOLDER: list = [None]


@pytest.mark.parametrize("make, refused", [
    (lambda m: _SystemCall(m), f"{os.system.__module__}.system"),
    (lambda m: _Eval(m), "builtins.eval"),
    (lambda m: _Popen(m), "subprocess.Popen"),
    (lambda m: Outer.Nested(), f"{__name__}.Outer.Nested"),
])
@pytest.mark.parametrize("where", ["top", "meta", "image"])
def test_malicious_pickles_are_refused_and_nothing_runs(server, tmp_path, make, refused, where):
    marker = tmp_path / "pwned"
    MARKER_HOLDER[0] = marker
    evil = make(marker)
    batch = small_batch()
    if where == "top":
        payload = evil
    elif where == "meta":  # hidden inside an otherwise valid request
        batch["meta_datas"][1] = evil
        payload = batch
    else:
        batch["output_image"][1] = evil
        payload = batch
    response = post(server, None, raw=pickle.dumps(payload))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "body" and f"refused global {refused}" in error["message"], error
    time.sleep(0.2)  # a spawned process (os.system, Popen) would have touched it by now
    assert not marker.exists(), "the payload ran"
    # the server is still serving
    assert post(server, small_batch()).status_code == 200


# ---- the unpickler on its own -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_loads_rebuilds_every_image_kind_exactly(protocol):
    rng = np.random.default_rng(1)
    pixels = random_pixels(rng)
    palette = Image.fromarray(pixels).convert("P")
    images = [Image.fromarray(pixels), file_backed(pixels, "PNG"), file_backed(pixels, "JPEG"), palette,
              Image.fromarray(pixels).convert("L"), Image.fromarray(pixels).convert("RGBA")]
    data = pickle.dumps({"images": images, "set": {1, 2}, "frozen": frozenset("ab"), "bytes": b"\x00\xff"},
                        protocol=protocol)
    out = safe_loads(data, max_bytes=len(data), max_pixels=SIZE * SIZE)
    assert out["set"] == {1, 2} and out["frozen"] == frozenset("ab") and out["bytes"] == b"\x00\xff"
    for original, placeholder in zip(images, out["images"]):
        rebuilt = placeholder.to_image()
        assert rebuilt.mode == original.mode and rebuilt.size == original.size
        assert np.array_equal(np.asarray(rebuilt.convert("RGB")), np.asarray(original.convert("RGB")))


def test_safe_loads_checks_the_image_state_before_building_it():
    def state_pickle(mode, size, data, palette=None):
        # what pickle.dumps(image) writes, with a state no real image has
        return (b"\x80\x04\x8c\tPIL.Image\x94\x8c\x05Image\x94\x93\x94)\x81\x94"
                + pickle.dumps([{}, mode, size, palette, data], protocol=4)[2:-1] + b"b.")

    cases = [
        (state_pickle("RGB", (100_000, 100_000), b""), "exceeds the limit"),  # PIL would allocate 30 GB first
        (state_pickle("RGB", (2, 2), b"\x00" * 11), "needs 12 bytes of pixels, got 11"),
        (state_pickle("I;16", (2, 2), b"\x00" * 8), "mode 'I;16' is not accepted"),
        (state_pickle("RGB", (0, 2), b""), "is not (width, height) positive ints"),
        (state_pickle("P", (1, 1), b"\x00", palette=[300, 0, 0]), "palette"),
    ]
    for data, message in cases:
        with pytest.raises(PickleRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
            safe_loads(data, max_bytes=len(data), max_pixels=10_000)


def test_safe_loads_refuses_old_protocols_and_other_codecs():
    with pytest.raises(RefusedGlobal, match="_reconstructor.*protocol 2 or later"):
        safe_loads(pickle.dumps(Image.new("RGB", (1, 1)), protocol=0), max_bytes=1 << 20, max_pixels=10)
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(RefusedGlobal, match="only encode\\(str, 'latin1'\\)"):
        safe_loads(rot13, max_bytes=1 << 20, max_pixels=10)
    with pytest.raises(PickleRejected, match="exceeds the limit of 3 bytes"):
        safe_loads(pickle.dumps([1, 2, 3]), max_bytes=3, max_pixels=10)
