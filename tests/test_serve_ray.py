"""The reward server as 2 Ray Serve replicas on a local Ray (loopback): the same results as in-process scoring,
and killing one replica under load loses no request silently (RewardClient retries what the dead replica
dropped; anything it cannot retry is a RewardServerError, never a wrong or missing answer). The replicas also
answer the Flow-GRPO / EditScore pickled protocol at / (`--rl-path /`), as one `jrm serve` does."""
from __future__ import annotations

import pickle
import socket
import threading

import httpx
import numpy as np
import pytest

from jrm_engine.client import RewardClient, RewardServerError

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import TEXTS, runtime_package  # noqa: F401  (fixture)
from test_serve_rl_protocol import expected_rewards, trainer_batch

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'ray[serve]')")


@pytest.fixture(scope="module")
def replicas(runtime_package):  # noqa: F811
    from ray import serve

    from jrm_engine.serve.ray_serve import deployment
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    except Exception as e:  # noqa: BLE001  (any failure to start Ray here is a reason to skip, stated)
        pytest.skip(f"a local Ray could not start here: {e}")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = deployment(str(runtime_package), "runtime", scorer_options={"max_batch": 4, "max_delay_ms": 5},
                     replicas=2, cpus_per_replica=0.5, rl_path="/")
    serve.run(app, name="jrm", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_serve_the_same_results(replicas, torch_scorer):  # noqa: F811
    sources, edited = images(4, 56, 90), images(4, 56, 91)
    with RewardClient(replicas) as client:
        for _ in range(4):  # several requests: both replicas answer some
            np.testing.assert_allclose(client.score(sources, TEXTS, edited), torch_scorer.score(sources, TEXTS, edited),
                                       atol=FP32_TOL, rtol=0)
        np.testing.assert_allclose(client.score_group(sources[0], TEXTS[0], edited),
                                   torch_scorer.score_group(sources[0], TEXTS[0], edited), atol=FP32_TOL, rtol=0)


def test_replicas_answer_the_flow_grpo_protocol(replicas, torch_scorer):  # noqa: F811
    # Every replica builds its app by the same __serve_build_asgi_app__, so any replica answering shows the wiring;
    # a few calls let the proxy spread them over both.
    for seed in (8, 9, 10):
        batch = trainer_batch(prompts=2, group=3, seed=seed)
        r = httpx.post(replicas + "/", content=pickle.dumps(batch), timeout=120,
                       headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(pickle.loads(r.content)["rewards"], expected_rewards(torch_scorer, batch),
                                   atol=FP32_TOL, rtol=0)


def test_killing_a_replica_under_load_loses_no_request_silently(replicas, torch_scorer):  # noqa: F811
    from ray import serve
    sources, edited = images(4, 56, 92), images(4, 56, 93)
    want = torch_scorer.score_group(sources[0], TEXTS[1], edited)
    answers, errors, stop = [], [], threading.Event()

    def client():
        with RewardClient(replicas, backoff_s=0.2, retries=10) as c:
            while not stop.is_set():
                try:
                    answers.append(c.score_group(sources[0], TEXTS[1], edited))
                except RewardServerError as e:  # failed loudly: allowed, counted
                    errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        while len(answers) < 8:
            threading.Event().wait(0.1)
        status = serve.status().applications["jrm"].deployments["RewardReplica"]
        assert status.replica_states.get("RUNNING") == 2
        victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "RewardReplica" in a["name"])
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        before = len(answers)
        while len(answers) < before + 16:
            threading.Event().wait(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    for got in answers:
        np.testing.assert_allclose(got, want, atol=FP32_TOL, rtol=0)
    assert not errors, errors[:3]
