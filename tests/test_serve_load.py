"""The reward server under load and faults, on loopback: 64 concurrent clients mixing single and group requests
(every answer matched to its request, batched across requests), a flood past the runtime's queue bound (503 +
Retry-After, then recovery), clients that disconnect mid-request, and SIGTERM under load on a real `jrm serve`
subprocess (every request in flight answered)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from jrm_engine.client import RewardClient, encode_binary
from jrm_engine.serve.payload import BINARY

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import TEXTS, runtime_package  # noqa: F401  (fixture)
from test_serve import serve

SOURCES, EDITED = images(6, 56, 80), images(6, 56, 81)


def plan(clients: int, per_client: int, seed: int = 0):
    """Each client's requests: ("score", [(s, t, e)...]) or ("group", s, t, [e...]) as pool indices."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(clients):
        mine = []
        for k in range(per_client):
            n = int(rng.integers(1, 5))
            if k % 2:
                mine.append(("group", int(rng.integers(6)), int(rng.integers(4)), rng.integers(0, 6, n).tolist()))
            else:
                mine.append(("score", [tuple(int(x) for x in rng.integers(0, [6, 4, 6])) for _ in range(n)]))
        out.append(mine)
    return out


def triples(request):
    if request[0] == "group":
        _, s, t, es = request
        return [(s, t, e) for e in es]
    return request[1]


def body(request) -> tuple[str, bytes]:
    if request[0] == "group":
        _, s, t, es = request
        header = {"instruction": TEXTS[t], "source": [56, 56, 3], "candidates": [len(es), 56, 56, 3]}
        return "/v1/score_group", encode_binary(header, [SOURCES[s], np.stack([EDITED[e] for e in es])])
    items = request[1]
    header = {"instructions": [TEXTS[t] for _, t, _ in items], "sources": [len(items), 56, 56, 3],
              "edited": [len(items), 56, 56, 3]}
    return "/v1/score", encode_binary(header, [np.stack([SOURCES[s] for s, _, _ in items]),
                                              np.stack([EDITED[e] for _, _, e in items])])


def expected_table(scorer, requests):
    wanted = sorted({t for r in requests for t in triples(r)})
    rewards = scorer.score([SOURCES[s] for s, _, _ in wanted], [TEXTS[t] for _, t, _ in wanted],
                           [EDITED[e] for _, _, e in wanted])
    return dict(zip(wanted, rewards))


async def _client(url, requests, results):
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for request in requests:
            path, data = body(request)
            r = await http.post(path, content=data, headers={"Content-Type": BINARY})
            results.append((request, r.status_code, r.headers, r.json()))


def run_clients(url, per_client_requests):
    results: list = []

    async def main():
        await asyncio.gather(*(_client(url, reqs, results) for reqs in per_client_requests))

    asyncio.run(main())
    return results


@pytest.fixture(scope="module")
def server(runtime_package):  # noqa: F811
    srv, engine = serve(runtime_package, max_batch=6, max_delay_ms=10, max_queue=1024)
    yield srv, engine
    srv.stop()


def test_64_concurrent_clients_mixed_single_and_group(server, torch_scorer):  # noqa: F811
    srv, engine = server
    requests = plan(64, 3)
    table = expected_table(torch_scorer, [r for mine in requests for r in mine])
    before = engine.stats()
    results = run_clients(srv.url, requests)
    after = engine.stats()
    assert len(results) == 64 * 3
    wrong = []
    for request, status, _, answer in results:
        want = [table[t] for t in triples(request)]
        if status != 200 or not np.allclose(answer["rewards"], want, atol=FP32_TOL, rtol=0):
            wrong.append((request, status, answer, want))
    assert not wrong, wrong[:3]
    candidates = sum(len(triples(r)) for mine in requests for r in mine)
    assert after["completed"] - before["completed"] == candidates and after["failed"] == before["failed"]
    # A group request is a batch of its own on the group package (source encoded once); the single-item requests
    # share batches across requests: far fewer batches than requests.
    singles = sum(r[0] == "score" for mine in requests for r in mine)
    batches = (after["batches"] - before["batches"]) - (after["groups"] - before["groups"])
    assert batches < singles / 2, f"{batches} batches for {singles} single requests: they did not share batches"


def test_disconnect_mid_request(server):
    srv, engine = server
    host, port = srv.url.removeprefix("http://").split(":")
    path, data = body(("group", 0, 0, [1, 2, 3]))
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {BINARY}\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
    before = engine.stats()
    for cut in (len(data) // 2, len(data)):  # mid-body, and after the whole request before the answer
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head + data[:cut])
        time.sleep(0.2)
    with RewardClient(srv.url) as client:  # still serving
        assert len(client.score_group(SOURCES[0], TEXTS[0], EDITED[:3])) == 3
    deadline = time.monotonic() + 30
    while engine.stats()["completed"] - before["completed"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = engine.stats()
    # The abandoned complete request still ran (its answer had nowhere to go); the half-sent one never reached it.
    assert after["completed"] - before["completed"] == 6 and after["failed"] == before["failed"]
    assert after["queue_size"] == 0


def test_flood_past_the_queue_bound_gets_503_and_recovers(runtime_package, torch_scorer):  # noqa: F811
    srv, engine = serve(runtime_package, max_batch=4, max_delay_ms=50, max_queue=16)
    try:
        requests = [[("score", [(i % 6, i % 4, (i + 1) % 6)] * 4)] for i in range(48)]
        table = expected_table(torch_scorer, [r for mine in requests for r in mine])
        results = run_clients(srv.url, requests)
        statuses = [status for _, status, _, _ in results]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        for request, status, headers, answer in results:
            if status == 503:
                assert headers["retry-after"] == "1" and "queue is full" in answer["error"]["message"]
            else:
                np.testing.assert_allclose(answer["rewards"], [table[t] for t in triples(request)], atol=FP32_TOL)
        assert engine.stats()["rejected"] > 0
        # Recovery: the same flood through RewardClient (which backs off on 503) is answered in full.
        answers = {}

        def worker(k):
            with RewardClient(srv.url, backoff_s=0.05) as client:
                _, items = requests[k][0]
                answers[k] = client.score([SOURCES[s] for s, _, _ in items], [TEXTS[t] for _, t, _ in items],
                                          [EDITED[e] for _, _, e in items])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(answers) == 24
        for k, got in answers.items():
            np.testing.assert_allclose(got, [table[t] for t in triples(requests[k][0])], atol=FP32_TOL)
        assert 'jrm_rejections_total{reason="overloaded"}' in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


def start_jrm_serve(package, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m jrm_engine.serve PACKAGE ARGS` on a free loopback port, returned once /readyz is 200 (the
    process is killed if it never gets there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "jrm_engine.serve", str(package), "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180  # loading and warming the package on a loaded 2-core CI machine
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise AssertionError(f"jrm serve did not become ready: {proc.communicate(timeout=30)[0][-3000:]}")
        time.sleep(0.2)


def test_cli_rl_path_serves_both_protocols(runtime_package, torch_scorer):  # noqa: F811
    """`jrm serve MODEL --rl-path /`: the Flow-GRPO / EditScore pickled protocol at / beside the JSON API."""
    import pickle

    from test_serve_rl_protocol import expected_rewards, trainer_batch
    proc, url = start_jrm_serve(runtime_package, "--rl-path", "/")
    try:
        batch = trainer_batch(prompts=2, group=3, seed=7)
        r = httpx.post(url + "/", content=pickle.dumps(batch), timeout=120,
                       headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(pickle.loads(r.content)["rewards"], expected_rewards(torch_scorer, batch),
                                   atol=FP32_TOL, rtol=0)
        with RewardClient(url) as client:
            np.testing.assert_allclose(client.score_group(SOURCES[0], TEXTS[0], EDITED[:3]),
                                       torch_scorer.score_group(SOURCES[0], TEXTS[0], EDITED[:3]), atol=FP32_TOL,
                                       rtol=0)
    finally:
        proc.terminate()
        try:
            assert proc.wait(60) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigterm_under_load_answers_every_request_in_flight(runtime_package):  # noqa: F811
    proc, url = start_jrm_serve(runtime_package, "--max-batch", "4", "--max-delay-ms", "20")
    try:
        answered, lost, started = [], [], threading.Event()

        def client(k):
            path, data = body(("group", k % 6, k % 4, [0, 1, 2, 3]))
            with httpx.Client(base_url=url, timeout=60) as http:
                while True:
                    try:
                        r = http.post(path, content=data, headers={"Content-Type": BINARY})
                    except httpx.ConnectError:
                        return  # refused: the server had stopped accepting, this request never got in
                    except httpx.TransportError as e:
                        lost.append(repr(e))  # accepted, then dropped: what must never happen
                        return
                    if r.status_code != 200:
                        # A request on a kept-alive connection after shutdown began gets 503 from the app, or
                        # uvicorn closes the idle connection; anything else is a failure.
                        lost.append(f"{r.status_code} {r.text}") if r.status_code != 503 else None
                        return
                    answered.append(k)
                    started.set()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        assert started.wait(120)
        deadline = time.monotonic() + 120  # every client answered at least once on average: the load is running
        while len(answered) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        # uvicorn re-raises the captured SIGTERM once it has drained, so the exit status says how it stopped.
        assert proc.wait(120) in (0, -signal.SIGTERM)
        output = proc.stdout.read()
        assert not lost, (lost, output[-2000:])
        assert len(answered) >= 16 and "Finished server process" in output
    finally:
        if proc.poll() is None:
            proc.kill()
