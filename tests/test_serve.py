"""`jrm serve`'s HTTP app on the C++ runtime, on loopback (a real uvicorn in a thread): results equal in-process
scoring for both endpoints and both payload formats, malformed bodies are 4xx naming the problem, limits, auth,
probes and metrics. The tiny model's AOTInductor package is compiled once per session (test_export)."""
from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from jrm_engine.client import RewardClient, RewardServerError, encode_binary, flow_grpo_reward
from jrm_engine.serve import ServeEngine, ServeSettings, create_app
from jrm_engine.serve.payload import BINARY

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import TEXTS, runtime_package  # noqa: F401  (fixture)


class Server:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread; `stop()` is the same drain as SIGTERM."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)


def serve(package, settings=None, **scorer_options):
    settings = settings or ServeSettings()
    options = {"max_batch": 4, "max_delay_ms": 5, "max_queue": 64, **scorer_options}
    engine = ServeEngine.load(package, backend="runtime", settings=settings, **options)
    return Server(create_app(engine, settings)), engine


@pytest.fixture(scope="module")
def server(runtime_package):  # noqa: F811
    srv, engine = serve(runtime_package)
    yield srv, engine
    srv.stop()


def png(image: np.ndarray, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- results equal in-process scoring ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["binary", "json"])
def test_http_results_equal_the_in_process_scorer(server, torch_scorer, fmt):  # noqa: F811
    srv, engine = server
    sources, edited = images(5, 56, 40), images(5, 56, 41)
    edited[1] = np.random.default_rng(3).integers(0, 256, (70, 45, 3), dtype=np.uint8)  # resized like Scorer
    texts = [TEXTS[i % len(TEXTS)] for i in range(5)]
    with RewardClient(srv.url, format=fmt) as client:
        got = client.score(sources, texts, edited)
        np.testing.assert_allclose(got, torch_scorer.score(sources, texts, edited), atol=FP32_TOL, rtol=0)
        assert client.model == engine.model and client.model.startswith("sha256:")
        groups_before = engine.stats()["groups"]
        got = client.score_group(sources[0], texts[1], edited)
        np.testing.assert_allclose(got, torch_scorer.score_group(sources[0], texts[1], edited), atol=FP32_TOL, rtol=0)
        assert engine.stats()["groups"] > groups_before, "score_group did not take the runtime's group path"


def test_jpeg_items_and_data_urls(server, torch_scorer):  # noqa: F811
    srv, _ = server
    source, edited = images(1, 56, 50)[0], images(1, 64, 51)[0]
    jpeg = png(edited, "JPEG")
    body = {"items": [{"source": "data:image/png;base64," + b64(png(source)), "instruction": TEXTS[0],
                       "edited": b64(jpeg)}]}
    answer = httpx.post(srv.url + "/v1/score", json=body, timeout=60).json()
    np.testing.assert_allclose(answer["rewards"], torch_scorer.score([source], [TEXTS[0]], [jpeg]), atol=FP32_TOL,
                               rtol=0)


def test_flow_grpo_reward_fn_scores_groups_of_12(server, torch_scorer):  # noqa: F811
    import torch
    srv, engine = server
    sources = images(2, 56, 60)
    candidates = images(24, 56, 61)
    tensor = torch.from_numpy(np.stack(candidates)).permute(0, 3, 1, 2).float() / 255.0  # a sampler's output
    prompts = [TEXTS[0]] * 12 + [TEXTS[2]] * 12
    metadata = [{"source_image": sources[i // 12]} for i in range(24)]
    with RewardClient(srv.url) as client:
        scores, info = flow_grpo_reward(client)(tensor, prompts, metadata)
    want = np.concatenate([torch_scorer.score_group(sources[0], TEXTS[0], candidates[:12]),
                           torch_scorer.score_group(sources[1], TEXTS[2], candidates[12:])])
    np.testing.assert_allclose(scores, want, atol=FP32_TOL, rtol=0)
    assert info == {"model": engine.model, "groups": 2}


# ---- malformed bodies: every one a 4xx naming the problem, never a crash ---------------------------------------
def _binary(header, *arrays):
    return encode_binary(header, list(arrays))


_IMG = np.zeros((8, 8, 3), np.uint8)
_PNG = b64(png(_IMG))
MALFORMED = [  # (endpoint, content type, body, status, words the error names)
    ("score", "application/json", b"{not json", 422, "body"),
    ("score", "application/json", b"[]", 422, "ScoreRequest"),
    ("score", "application/json", b'{"items": []}', 422, "items"),
    ("score", "application/json", b'{"items": [{"source": "x"}]}', 422, "items.0.instruction"),
    ("score", "application/json", ('{"items": [{"source": "%%%%", "instruction": "a", "edited": "%s"}]}' % _PNG).encode(),
     422, "items[0].source: not valid base64"),
    ("score", "application/json", ('{"items": [{"source": "%s", "instruction": "a", "edited": "%s"}]}'
                                   % (_PNG, b64(b"GIF89a not an image"))).encode(), 422, "items[0].edited: not a PNG"),
    ("score", "application/json", ('{"items": [{"source": "%s", "instruction": "a", "edited": "%s"}]}'
                                   % (_PNG, b64(png(_IMG)[:40]))).encode(), 422, "items[0].edited"),  # truncated
    ("score", "application/json", ('{"items": [{"source": "%s", "instruction": "%s", "edited": "%s"}]}'
                                   % (_PNG, " ".join(["red"] * 40), _PNG)).encode(), 422, "items[0]: instruction"),
    ("score", "application/json", ('{"items": [{"source": "%s", "instruction": " ", "edited": "%s"}]}'
                                   % (_PNG, _PNG)).encode(), 422, "empty instruction"),
    ("score", "text/plain", b"hello", 422, "content-type"),
    ("score", BINARY, b"\x01", 422, "body"),
    ("score", BINARY, struct.pack("<I", 999) + b"{}", 422, "header length"),
    ("score", BINARY, struct.pack("<I", 3) + b"\xff\xfe{", 422, "header"),
    ("score", BINARY, _binary({"instructions": ["a"], "sources": [1, 8, 8, 3], "edited": [1, 8, 8, 3]}, _IMG[None]),
     422, "array bytes"),
    ("score", BINARY, _binary({"instructions": ["a"], "sources": [1, 8, 8, 4], "edited": [1, 8, 8, 4]}), 422,
     "header.sources"),
    ("score", BINARY, _binary({"instructions": ["a", "b"], "sources": [1, 8, 8, 3], "edited": [1, 8, 8, 3]},
                              _IMG[None], _IMG[None]), 422, "2 instructions"),
    ("score", BINARY, _binary({"instructions": ["a"], "sources": [1, 8, 8], "edited": [1, 8, 8, 3]}), 422,
     "header.sources"),
    ("score", BINARY, _binary({"instructions": [7], "sources": [1, 8, 8, 3], "edited": [1, 8, 8, 3]}), 422,
     "header.instructions[0]"),
    ("score", BINARY, _binary({"instructions": ["a"], "sources": [1, 8, 8, 3], "edited": [1, 8, 8, 3],
                               "dtype": "float32"}), 422, "header.dtype"),
    ("score", BINARY, _binary([1, 2]), 422, "JSON object"),
    ("score_group", "application/json", b'{"source": "x", "instruction": "a", "candidates": []}', 422, "candidates"),
    ("score_group", "application/json", b'{"source": 5}', 422, "source"),
    ("score_group", BINARY, _binary({"instruction": "a", "source": [8, 8, 3], "candidates": [0, 8, 8, 3]}), 422,
     "header.candidates"),
    ("score_group", BINARY, _binary({"source": [8, 8, 3], "candidates": [1, 8, 8, 3]}, _IMG, _IMG[None]), 422,
     "header.instruction"),
]


def test_malformed_bodies_are_4xx_naming_the_problem(server):
    srv, engine = server
    failures = []
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for endpoint, kind, body, status, words in MALFORMED:
            r = http.post(f"/v1/{endpoint}", content=body, headers={"Content-Type": kind})
            error = r.json().get("error", {}) if r.headers.get("content-type") == "application/json" else {}
            said = f"{error.get('field')}: {error.get('message')}"
            if r.status_code != status or words not in said:
                failures.append(f"{endpoint} {body[:60]!r}: {r.status_code} {said!r} (expected {status}, {words!r})")
        assert not failures, "\n".join(failures)
        assert http.get("/healthz").status_code == 200
        ok = http.post("/v1/score_group", content=_binary({"instruction": "a", "source": [8, 8, 3],
                                                          "candidates": [1, 8, 8, 3]}, _IMG, _IMG[None]),
                       headers={"Content-Type": BINARY})
        assert ok.status_code == 200, ok.text  # still serving after every bad request
    assert engine.stats()["failed"] == 0


# ---- limits and auth -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def strict_server(runtime_package):  # noqa: F811
    settings = ServeSettings(max_body_bytes=200_000, max_pixels=64 * 64, max_candidates=3, api_key="s3cret")
    srv, engine = serve(runtime_package, settings)
    yield srv
    srv.stop()


def test_limits(strict_server):
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=strict_server.url, headers=auth, timeout=60) as http:
        r = http.post("/v1/score", content=b"x" * 300_000, headers={"Content-Type": BINARY})
        assert r.status_code == 413 and "exceeds the limit of 200000" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
            for _ in range(30):
                yield b"x" * 10_000
        r = http.post("/v1/score", content=chunks(), headers={"Content-Type": BINARY})
        assert r.status_code == 413
        # A small PNG whose header says 2000 x 2000: refused from the header, never decoded.
        bomb = b64(png(np.zeros((2000, 2000, 3), np.uint8)))
        assert len(bomb) < 100_000
        r = http.post("/v1/score_group", json={"source": bomb, "instruction": "a", "candidates": [_PNG]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "source"
        assert "2000x2000 = 4000000 pixels exceeds the limit of 4096" in r.json()["error"]["message"]
        r = http.post("/v1/score_group", content=_binary({"instruction": "a", "source": [8, 8, 3],
                                                          "candidates": [1, 100, 100, 3]}),
                      headers={"Content-Type": BINARY})
        assert r.status_code == 422 and "pixels exceeds" in r.json()["error"]["message"]
        r = http.post("/v1/score_group", json={"source": _PNG, "instruction": "a", "candidates": [_PNG] * 4})
        assert r.status_code == 422 and "4 exceeds the limit of 3" in r.json()["error"]["message"]
        assert http.post("/v1/score_group", json={"source": _PNG, "instruction": "a",
                                                  "candidates": [_PNG] * 3}).status_code == 200
        metrics = http.get("/metrics").text
        assert 'jrm_rejections_total{reason="body_too_large"} 2.0' in metrics
        assert 'jrm_rejections_total{reason="invalid_input"} 3.0' in metrics


def test_auth(strict_server):
    url = strict_server.url
    for headers, message in [({}, "missing bearer token"), ({"Authorization": "Bearer nope"}, "wrong bearer token"),
                             ({"Authorization": "Basic s3cret"}, "wrong bearer token")]:
        r = httpx.post(url + "/v1/score_group", json={}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["message"].startswith(message)
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + "/metrics", headers=headers).status_code == 401
    assert httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/readyz").status_code == 200
    with pytest.raises(RewardServerError, match="wrong bearer token"):
        RewardClient(url, api_key="nope").info()
    with RewardClient(url, api_key="s3cret") as client:
        assert client.info()["max_candidates"] == 3


# ---- probes, metrics, docs -------------------------------------------------------------------------------------
def test_probes_metrics_and_openapi(server):
    srv, engine = server
    with RewardClient(srv.url) as client:
        client.score_group(images(1, 56, 70)[0], TEXTS[0], images(3, 56, 71))
        info = client.info()
    assert info["image_size"] == 56 and info["model"] == engine.model and info["batching"] is True
    assert httpx.get(srv.url + "/readyz").json() == {"status": "ready", "model": engine.model}
    metrics = httpx.get(srv.url + "/metrics").text
    for line in ['jrm_requests_total{endpoint="score_group",status="200"}', 'jrm_candidates_total{endpoint="score_group"}',
                 'jrm_request_seconds_bucket{endpoint="score_group",le="0.001"}',
                 'jrm_decode_seconds_count{endpoint="score_group",format="binary"}', "jrm_runtime_queue_size ",
                 "jrm_runtime_mean_batch_size ", "jrm_runtime_batches "]:
        assert line in metrics, line
    spec = httpx.get(srv.url + "/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", BINARY}
    assert {"ScoreRequest", "ScoreItem", "GroupRequest"} <= set(spec["components"]["schemas"])


def test_cli_help_explains():
    from jrm_engine.serve.cli import parser
    text = parser().format_help()
    for words in ("/v1/score_group", "--api-key", "JRM_API_KEY", "SIGTERM", "--replicas", "127.0.0.1"):
        assert words in text
