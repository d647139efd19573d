"""C++ batching runtime (jrm_engine._runtime via RuntimeScorer) on the AOTInductor backend, CPU.

The engine is a stand-in with exactly the scoring-graph contract (tests/runtime_toy_graph.py), compiled once per
session. Truth for each request is the eager module on that request alone; the compiled package run on that
request alone (batch 1) must agree with it too, so any difference comes from batching.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runtime_toy_graph import ToyScoringGraph, build_toy_package

from jrm_engine.runtime import BatchError, QueueFullError, RuntimeClosedError, RuntimeScorer

IMAGE, VOCAB, BUCKETS, MAX_BATCH = 28, 512, (8, 16, 32), 16
TOL = 1e-5


@pytest.fixture(scope="session")
def toy_engine(tmp_path_factory):
    # A fixed folder, so test modules that import this fixture share one compile per session.
    folder = tmp_path_factory.getbasetemp() / "toy_engine"
    if (folder / "manifest.json").is_file():
        return folder / "manifest.json", ToyScoringGraph(IMAGE, VOCAB, max(BUCKETS)).eval()
    return build_toy_package(folder, IMAGE, VOCAB, BUCKETS, MAX_BATCH)


@pytest.fixture(scope="session")
def package_alone(toy_engine):
    manifest, _ = toy_engine
    return torch._inductor.aoti_load_package(str(manifest.parent / "toy.pt2"))


def make_request(rng, n_tokens):
    return (rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
            rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
            rng.integers(1, VOCAB, n_tokens, dtype=np.int64))


def padded_inputs(request):
    source, edited, ids = request
    bucket = next(b for b in BUCKETS if b >= len(ids))
    padded = np.zeros((1, bucket), np.int64)
    padded[0, : len(ids)] = ids
    return (torch.from_numpy(source)[None], torch.from_numpy(edited)[None], torch.from_numpy(padded),
            torch.tensor([len(ids)]))


def truth(module, request) -> float:
    with torch.no_grad():
        return module(*padded_inputs(request)).item()


def assert_close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bad = np.flatnonzero(np.abs(got - want) > TOL)
    assert bad.size == 0, f"{what}: {bad.size} mismatches, first at {bad[:5]}: got {got[bad[:5]]}, want {want[bad[:5]]}"


def submit_all(manifest, requests, **options):
    """Submit every request at once, wait for all; the results and the runtime's stats."""
    with RuntimeScorer.load(manifest, **options) as rt:
        got = [f.result(timeout=20) for f in [rt.submit(*r) for r in requests]]
        return got, rt.stats()


def test_every_result_equals_scoring_that_request_alone(toy_engine, package_alone):
    manifest, module = toy_engine
    rng = np.random.default_rng(0)
    requests = [make_request(rng, int(n)) for n in rng.integers(1, max(BUCKETS) + 1, 160)]
    want = [truth(module, r) for r in requests]
    alone = [package_alone(*padded_inputs(r)).item() for r in requests]
    assert_close(alone, want, "package at batch 1 vs eager")

    got = [None] * len(requests)
    with RuntimeScorer.load(manifest, max_batch=8, max_delay_ms=3, inflight=2) as rt:
        def client(start):
            futures = [(i, rt.submit(*requests[i])) for i in range(start, len(requests), 4)]
            for i, f in futures:
                got[i] = f.result(timeout=30)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = rt.stats()
    assert_close(got, want, "runtime vs eager")
    assert stats["completed"] == len(requests) and stats["max_batch_size_seen"] <= 8
    assert stats["mean_batch_size"] > 1, "requests from 4 threads were never batched together"
    assert 0 < stats["queue_wait_us"]["p50"] <= stats["queue_wait_us"]["p99"] <= stats["queue_wait_us"]["max"]
    assert 0 < stats["run_us"]["p50"] <= stats["run_us"]["p99"]


def test_batch_closes_at_max_batch(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(1)
    requests = [make_request(rng, 5) for _ in range(8)]
    got, stats = submit_all(manifest, requests, max_batch=4, max_delay_ms=60_000)  # long before the delay
    assert stats["batches"] == 2 and stats["closed_full"] == 2 and stats["max_batch_size_seen"] == 4
    assert_close(got, [truth(module, r) for r in requests], "full batches")


def test_batch_closes_at_max_delay_after_its_first_request(toy_engine):
    manifest, _ = toy_engine
    rng = np.random.default_rng(2)
    delay = 0.3
    with RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=delay * 1000) as rt:
        rt.score([make_request(rng, 3)[0]], [make_request(rng, 3)[1]], [[1, 2]])  # warm the engine up
        start = time.perf_counter()
        first = rt.submit(*make_request(rng, 3))
        time.sleep(0.2)
        second = rt.submit(*make_request(rng, 4))
        first.result(timeout=10)
        elapsed = time.perf_counter() - start
        second.result(timeout=10)
        stats = rt.stats()
    # Closing `delay` after the *last* request would take 0.5 s.
    assert delay <= elapsed < delay + 0.15, elapsed
    # The warm-up's batch closed by score()'s flush, the two submitted requests' batch by the delay.
    assert stats["batches"] == 2 and stats["closed_flush"] == 1 and stats["closed_delay"] == 1
    assert stats["max_batch_size_seen"] == 2


def test_full_batches_keep_to_their_text_bucket(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(3)
    lengths = [2, 17, 8, 32, 3, 30]  # buckets 8, 32, 8, 32, 8, 32: each fills a batch of 3
    requests = [make_request(rng, n) for n in lengths]
    got, stats = submit_all(manifest, requests, max_batch=3, max_delay_ms=60_000)
    assert stats["batches"] == 2 and stats["closed_full"] == 2 and stats["padded_up"] == 0
    assert_close(got, [truth(module, r) for r in requests], "bucketed")


def test_an_early_batch_takes_shorter_requests_padded_up(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(5)
    lengths = [2, 8, 9, 16, 17, 32, 3, 12, 30]  # buckets 8, 8, 16, 16, 32, 32, 8, 16, 32
    requests = [make_request(rng, n) for n in lengths]
    got, stats = submit_all(manifest, requests, max_batch=MAX_BATCH, max_delay_ms=200)  # no flush: the delay
    # One engine call padded to 32 tokens instead of one per bucket; six requests came from shorter buckets.
    assert stats["batches"] == 1 and stats["closed_delay"] == 1 and stats["padded_up"] == 6
    assert_close(got, [truth(module, r) for r in requests], "padded up")


def test_score_flushes_instead_of_waiting_for_the_delay(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(6)
    requests = [make_request(rng, n) for n in (4, 20, 7)]
    got = []
    with RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=600_000) as rt:
        caller = threading.Thread(target=lambda: got.extend(rt.score(*zip(*requests))), daemon=True)
        caller.start()
        caller.join(timeout=30)  # the delay is 10 minutes: only the flush can close this batch
        assert not caller.is_alive(), "score() waited for max_delay instead of flushing"
        stats = rt.stats()
    assert stats["batches"] == 1 and stats["closed_flush"] == 1 and stats["closed_delay"] == 0
    assert_close(got, [truth(module, r) for r in requests], "flushed")


def test_full_queue_rejects_with_an_error_naming_the_limit(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(4)
    requests = [make_request(rng, 6) for _ in range(5)]
    rt = RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=60_000, max_queue=4)
    futures = [rt.submit(*r) for r in requests[:4]]
    with pytest.raises(QueueFullError, match="max_queue=4"):
        rt.submit(*requests[4])
    rt.close(drain=True)
    assert_close([f.result() for f in futures], [truth(module, r) for r in requests[:4]], "after rejection")
    stats = rt.stats()
    assert stats["rejected"] == 1 and stats["max_queue_size_seen"] == 4 and stats["closed_drain"] == 1


BAD_INPUTS = {
    "wrong image size": (lambda s, e, t: (s[:14], e, t), r"source_pixels must have shape \(S, S, 3\) with S in \{28\}"),
    "gray image": (lambda s, e, t: (s, e[..., 0], t), r"edited_pixels must have shape"),
    "float image": (lambda s, e, t: (s.astype(np.float32), e, t), r"source_pixels must be uint8 .* float32"),
    "token above vocab": (lambda s, e, t: (s, e, np.array([5, VOCAB])), r"text_ids\[1\] = 512 is outside the vocabulary \[0, 512\)"),
    "negative token": (lambda s, e, t: (s, e, np.array([-1])), r"text_ids\[0\] = -1 is outside"),
    "float token ids": (lambda s, e, t: (s, e, t.astype(np.float64)), r"text_ids must be int64"),
    "empty request": (lambda s, e, t: (s, e, []), r"text_ids is empty"),
    "text too long": (lambda s, e, t: (s, e, np.ones(33, np.int64)), r"33 tokens, more than the largest text bucket \(32\)"),
}


def test_bad_input_fails_only_its_own_future(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(5)
    good = [make_request(rng, int(n)) for n in rng.integers(1, 33, 12)]
    with RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=50) as rt:
        futures, bad = [], []
        for i, (name, (corrupt, message)) in enumerate(BAD_INPUTS.items()):
            futures.append(rt.submit(*good[i]))
            bad.append((name, message, rt.submit(*corrupt(*good[i]))))
        for name, message, f in bad:
            with pytest.raises(ValueError, match=message):
                f.result(timeout=10)
        assert_close([f.result(timeout=10) for f in futures], [truth(module, r) for r in good[: len(futures)]],
                     "good requests next to bad ones")
        assert rt.score(*zip(*good[-3:]))[0] == pytest.approx(truth(module, good[-3]), abs=TOL)  # still serving
        assert rt.stats()["invalid"] == len(BAD_INPUTS)


def test_engine_failure_fails_its_batch_and_the_runtime_keeps_running(toy_engine, tmp_path):
    manifest, _ = toy_engine
    spec = json.loads(manifest.read_text())
    spec["outputs"] = ["rewards", "log_sigma"]  # the package has one output: every batch fails
    for b in spec["buckets"]:
        b["package"] = str(manifest.parent / b["package"])
    (tmp_path / "manifest.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(6)
    with RuntimeScorer.load(tmp_path / "manifest.json", max_batch=4, max_delay_ms=1) as rt:
        for _ in range(2):
            with pytest.raises(BatchError, match=r"failed: engine returned 1 outputs, the manifest declares 2"):
                rt.submit(*make_request(rng, 4)).result(timeout=10)
        assert rt.stats()["failed"] == 2


def test_context_manager_drains_and_close_without_drain_fails_pending(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(7)
    requests = [make_request(rng, int(n)) for n in rng.integers(1, 33, 20)]
    start = time.perf_counter()
    with RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=60_000) as rt:
        futures = [rt.submit(*r) for r in requests]
    assert time.perf_counter() - start < 20  # drained at exit, not after the 60 s delay
    assert_close([f.result(timeout=0) for f in futures], [truth(module, r) for r in requests], "drained")
    with pytest.raises(RuntimeClosedError):
        rt.submit(*requests[0])
    rt.close()  # idempotent

    rt = RuntimeScorer.load(manifest, max_batch=MAX_BATCH, max_delay_ms=60_000)
    pending = [rt.submit(*r) for r in requests[:3]]
    rt.close(drain=False)
    for f in pending:
        with pytest.raises(BatchError, match="closed without draining"):
            f.result(timeout=0)


def test_score_group_and_score_with_more_requests_than_the_queue(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(8)
    source, _, ids = make_request(rng, 11)
    edited = [make_request(rng, 1)[1] for _ in range(12)]
    requests = [make_request(rng, int(n)) for n in rng.integers(1, 33, 40)]
    with RuntimeScorer.load(manifest, max_batch=8, max_delay_ms=2, max_queue=8) as rt:
        group = rt.score_group(source, edited, ids)
        many = rt.score(*zip(*requests))  # 40 requests through a queue of 8: waits, does not fail
    assert group.shape == (12,) and group.dtype == np.float32
    assert_close(group, [truth(module, (source, e, ids)) for e in edited], "score_group")
    assert_close(many, [truth(module, r) for r in requests], "score")


@pytest.mark.parametrize("field,value,message", [
    ("torch_version", "1.0.0", r"field 'torch_version' is '1.0.0'"),
    ("device", "cuda", r"field 'device' is 'cuda' but the runtime was asked for 'cpu'"),
    ("inputs", ["text_ids"], r"field 'inputs' must be"),
    ("format", "onnx", r"format/version must be"),
    ("sha256", "0" * 64, r"field 'sha256' of toy.pt2 does not match the file"),
])
def test_engine_for_another_environment_is_refused_naming_the_field(toy_engine, tmp_path, field, value, message):
    manifest, _ = toy_engine
    spec = json.loads(manifest.read_text())
    for b in spec["buckets"]:
        b["package"] = str(manifest.parent / b["package"])
        if field == "sha256":
            b["sha256"] = value
    if field != "sha256":
        spec[field] = value
    (tmp_path / "manifest.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        RuntimeScorer.load(tmp_path / "manifest.json", device="cpu")


def test_expected_provenance_is_checked(toy_engine):
    manifest, _ = toy_engine
    with pytest.raises(ValueError, match=r"field 'checkpoint_sha256' is None, expected 'abc'"):
        RuntimeScorer.load(manifest, expect={"checkpoint_sha256": "abc"})


def test_run_batch_takes_the_padded_contract_arrays(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(9)
    requests = [make_request(rng, n) for n in (3, 8, 1, 5)]
    ids = np.zeros((4, 8), np.int64)
    for i, r in enumerate(requests):
        ids[i, : len(r[2])] = r[2]
    batch = (torch.from_numpy(np.stack([r[0] for r in requests])), torch.from_numpy(np.stack([r[1] for r in requests])),
             torch.from_numpy(ids), torch.tensor([len(r[2]) for r in requests]))
    with RuntimeScorer.load(manifest, max_delay_ms=1) as rt:
        rewards, log_sigma = rt.run_batch(*batch)
    assert log_sigma is None
    with torch.no_grad():
        assert_close(rewards, module(*batch).numpy(), "run_batch vs the module on the same batch")


def test_two_output_head_returns_log_sigma(tmp_path_factory, toy_engine):
    manifest, module = build_toy_package(tmp_path_factory.mktemp("toy_sigma"), IMAGE, VOCAB, BUCKETS, MAX_BATCH,
                                         log_sigma=True)
    rng = np.random.default_rng(10)
    requests = [make_request(rng, int(n)) for n in rng.integers(1, 33, 10)]
    with torch.no_grad():
        want = [tuple(t.item() for t in module(*padded_inputs(r))) for r in requests]
    with RuntimeScorer.load(manifest, max_delay_ms=2) as rt:
        pair = rt.submit(*requests[0], return_log_sigma=True).result(timeout=10)
        rewards, log_sigma = rt.score(*zip(*requests), return_log_sigma=True)
        only_rewards = rt.score(*zip(*requests))
    assert_close(pair, want[0], "one future's (reward, log_sigma)")
    assert_close(rewards, [w[0] for w in want], "rewards")
    assert_close(log_sigma, [w[1] for w in want], "log_sigma")
    assert_close(only_rewards, rewards, "rewards without log_sigma")
    with RuntimeScorer.load(toy_engine[0]) as rt, pytest.raises(ValueError, match="no log_sigma output"):
        rt.submit(*requests[0], return_log_sigma=True)


# ---- groups: one source and instruction, G candidates on the group engine --------------------------------------
MAX_GROUP = 8


@pytest.fixture(scope="module")
def toy_group_engine(tmp_path_factory):
    return build_toy_package(tmp_path_factory.mktemp("toy_group"), IMAGE, VOCAB, BUCKETS, MAX_BATCH,
                             max_group=MAX_GROUP)


def group_truth(module, source, edited, ids) -> list[float]:
    return [truth(module, (source, e, ids)) for e in edited]


def test_a_group_encodes_its_source_once_and_equals_each_candidate_alone(toy_group_engine):
    manifest, module = toy_group_engine
    rng = np.random.default_rng(20)
    source, _, ids = make_request(rng, 11)
    edited = [make_request(rng, 1)[1] for _ in range(2 * MAX_GROUP + 3)]  # three group requests
    singles = [make_request(rng, int(n)) for n in rng.integers(1, max(BUCKETS) + 1, 10)]
    with RuntimeScorer.load(manifest, max_batch=4, max_delay_ms=5, inflight=2) as rt:
        single_futures = [rt.submit(*r) for r in singles]  # in flight beside the groups
        got = rt.score_group(source, edited, ids)
        got_singles = [f.result(timeout=20) for f in single_futures]
        stats = rt.stats()
    assert_close(got, group_truth(module, source, edited, ids), "group")
    assert_close(got_singles, [truth(module, r) for r in singles], "singles beside groups")
    assert stats["groups"] == 3 and stats["completed"] == len(edited) + len(singles)


def test_bad_group_input_fails_only_its_own_futures(toy_group_engine):
    manifest, module = toy_group_engine
    rng = np.random.default_rng(21)
    source, edited, ids = make_request(rng, 5)
    with RuntimeScorer.load(manifest, max_batch=4, max_delay_ms=5) as rt:
        too_many = rt.submit_group(source, np.stack([edited] * (MAX_GROUP + 1)), ids)
        wrong_size = rt.submit_group(source, np.zeros((2, IMAGE + 28, IMAGE + 28, 3), np.uint8), ids)
        good = rt.submit_group(source, np.stack([edited, edited]), ids)
        with pytest.raises(ValueError, match="max_group=8"):
            too_many[0].result(timeout=10)
        with pytest.raises(ValueError, match=r"edited_pixels must have shape \(G, S, S, 3\)"):
            wrong_size[1].result(timeout=10)
        assert_close([f.result(timeout=20) for f in good], group_truth(module, source, [edited] * 2, ids), "good")
        stats = rt.stats()
    assert stats["invalid"] == 2 and stats["groups"] == 1


def test_without_a_group_package_groups_are_refused_and_score_group_repeats_the_source(toy_engine):
    manifest, module = toy_engine
    rng = np.random.default_rng(22)
    source, edited, ids = make_request(rng, 5)
    with RuntimeScorer.load(manifest, max_batch=4, max_delay_ms=5) as rt:
        with pytest.raises(ValueError, match="no group package"):
            rt.submit_group(source, np.stack([edited]), ids)
        got = rt.score_group(source, [edited, edited], ids)
        stats = rt.stats()
    assert_close(got, group_truth(module, source, [edited] * 2, ids), "repeated source")
    assert stats["groups"] == 0


def test_close_without_drain_answers_every_candidate(toy_group_engine):
    manifest, _ = toy_group_engine
    rng = np.random.default_rng(23)
    source, edited, ids = make_request(rng, 5)
    group = np.stack([edited] * MAX_GROUP)
    rt = RuntimeScorer.load(manifest, max_batch=4, max_delay_ms=5, inflight=1, max_queue=4096)
    futures = [f for _ in range(400) for f in rt.submit_group(source, group, ids)]
    rt.close(drain=False)  # groups still queued fail (how many depends on the worker's pace), none may hang
    outcomes = [f.exception(timeout=10) for f in futures]
    stats = rt.stats()
    failed = sum(isinstance(e, (BatchError, RuntimeClosedError)) for e in outcomes)
    assert failed + outcomes.count(None) == len(futures)
    assert stats["failed"] == failed and stats["completed"] == outcomes.count(None)  # counted per candidate


def test_group_limits_are_checked_and_score_group_waits_for_queue_room(toy_group_engine, tmp_path):
    manifest, module = toy_group_engine
    rng = np.random.default_rng(24)
    source, edited, ids = make_request(rng, 5)
    with pytest.raises(ValueError, match="max_group=8 exceeds max_queue=4"):
        RuntimeScorer.load(manifest, max_queue=4)
    with RuntimeScorer.load(manifest, max_batch=4, max_delay_ms=5, max_queue=MAX_GROUP) as rt:
        candidates = [make_request(rng, 1)[1] for _ in range(3 * MAX_GROUP + 1)]  # more than the queue holds
        assert_close(rt.score_group(source, candidates, ids), group_truth(module, source, candidates, ids),
                     "through back-pressure")
        with pytest.raises(ValueError, match="no candidates"):
            rt.submit_group(source, np.zeros((0, IMAGE, IMAGE, 3), np.uint8), ids)
    # A manifest that also serves 56 px singles: the group package still takes 28 px only.
    d = json.loads(manifest.read_text())
    d["buckets"].append({"text_len": 8, "package": "toy.pt2", "image_size": 56})
    d["group"]["package"] = str(manifest.parent / d["group"]["package"])
    d["buckets"] = [{**b, "package": str(manifest.parent / b["package"])} for b in d["buckets"]]
    (tmp_path / "mixed.json").write_text(json.dumps(d))
    with RuntimeScorer.load(tmp_path / "mixed.json", max_batch=4) as rt:
        big = np.zeros((56, 56, 3), np.uint8)
        with pytest.raises(ValueError, match="group package takes 28 px images only"):
            rt.submit_group(big, np.stack([big]), ids)[0].result(timeout=10)


def test_score_all_retries_when_its_own_requests_ran_between_refusal_and_check():
    # The race CI met: refused while its own group waited, then that group ran before the wait list was built.
    def finished(value):
        f = Future()
        f.set_result(value)
        return f

    def refused_once(value, refusals):
        def submit():
            if refusals:
                refusals.pop()
                raise QueueFullError("request queue is full: max_queue=1 requests, 1 already waiting")
            return [finished(value)]
        return submit

    caller = SimpleNamespace(flush=lambda: None)
    got = RuntimeScorer._score_all(caller, [lambda: [finished(1.0)], refused_once(2.0, [1])], False)
    assert_close(got, [1.0, 2.0], "retried")
    # Refused again with none of its own requests waiting: the queue is full of other callers' requests.
    with pytest.raises(QueueFullError, match="max_queue=1"):
        RuntimeScorer._score_all(caller, [refused_once(1.0, [1, 1])], False)
