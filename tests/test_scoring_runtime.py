"""Scorer.load(..., backend="runtime"): the C++ batching runtime behind the Scorer API, on the tiny model's
AOTInductor package (compiled once per session, shared with test_export / test_scoring), CPU.

The oracle is the torch backend on the same checkpoint; the compiled package is within FP32_TOL of it
(test_scoring), so any larger difference comes from the runtime's batching, padding or preprocessing.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jrm_engine.runtime import RuntimeClosedError
from jrm_engine.scoring import Scorer

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)

TEXTS = ["make the red circle", "remove it", "add a square", "bigger"]  # fit the exported 16-token bucket


@pytest.fixture(scope="session")
def runtime_package(aoti_package, small_model):  # noqa: F811
    """The package as `jrm-export --aoti` leaves it: manifest and tokenizer folder beside the .pt2."""
    from jrm_engine.export.cli import save_tokenizer

    path = aoti_package[0]
    save_tokenizer(small_model.tokenizer, path)
    return path


@pytest.fixture(scope="module")
def runtime_scorer(runtime_package):
    with Scorer.load(runtime_package, backend="runtime", max_batch=4, max_delay_ms=20, max_queue=64) as scorer:
        yield scorer


def test_score_and_group_equal_the_torch_backend(runtime_scorer, torch_scorer):  # noqa: F811
    sources, edited = images(6, 56, 10), images(6, 56, 11)
    texts = [TEXTS[i % len(TEXTS)] for i in range(6)]
    np.testing.assert_allclose(runtime_scorer.score(sources, texts, edited), torch_scorer.score(sources, texts, edited),
                               atol=FP32_TOL, rtol=0)
    groups_before = runtime_scorer.engine.stats()["groups"]
    np.testing.assert_allclose(runtime_scorer.score_group(sources[0], texts[0], edited),
                               torch_scorer.score_group(sources[0], texts[0], edited), atol=FP32_TOL, rtol=0)
    # The package was exported with its group package: the runtime ran the 6 candidates there, source encoded
    # once per chunk (the Scorer sends chunks of max_batch=4).
    assert runtime_scorer.engine.stats()["groups"] == groups_before + 2


def test_submit_from_several_threads_is_batched_and_exact(runtime_scorer, torch_scorer):  # noqa: F811
    n, threads = 16, 4
    sources, edited = images(n, 56, 20), images(n, 56, 21)
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    before = runtime_scorer.engine.stats()

    def client(k):
        futures = [(i, runtime_scorer.submit(sources[i], texts[i], edited[i])) for i in range(k, n, threads)]
        return [(i, f.result(timeout=120)) for i, f in futures]

    with ThreadPoolExecutor(threads) as pool:
        answers = dict(pair for part in pool.map(client, range(threads)) for pair in part)
    after = runtime_scorer.engine.stats()
    got = np.array([answers[i] for i in range(n)], dtype=np.float32)
    np.testing.assert_allclose(got, torch_scorer.score(sources, texts, edited), atol=FP32_TOL, rtol=0)
    assert after["completed"] - before["completed"] == n
    assert after["batches"] - before["batches"] < n, "every request ran alone: nothing was batched"


def test_bad_request_fails_only_its_future(runtime_scorer, torch_scorer, tmp_path):  # noqa: F811
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    sources, edited = images(2, 56, 30), images(2, 56, 31)
    first = runtime_scorer.submit(sources[0], TEXTS[0], edited[0])
    bad_image = runtime_scorer.submit(sources[1], TEXTS[1], corrupt)
    too_long = runtime_scorer.submit(sources[1], " ".join(["red"] * 17), edited[1])
    second = runtime_scorer.submit(sources[1], TEXTS[1], edited[1])
    with pytest.raises(ValueError, match=r"^edited: cannot read image"):
        bad_image.result(timeout=60)
    with pytest.raises(ValueError, match=r"^instruction: 17 tokens exceeds the largest text bucket"):
        too_long.result(timeout=60)
    got = [first.result(timeout=60), second.result(timeout=60)]
    np.testing.assert_allclose(got, torch_scorer.score(sources, TEXTS[:2], edited), atol=FP32_TOL, rtol=0)


def test_context_manager_drains_then_refuses(runtime_package, torch_scorer):  # noqa: F811
    n = 7  # max_batch 4: one full batch and one that only the drain closes (its delay is a minute)
    sources, edited = images(n, 56, 40), images(n, 56, 41)
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    with Scorer.load(runtime_package, backend="runtime", max_batch=4, max_delay_ms=60_000) as scorer:
        futures = [scorer.submit(s, t, e) for s, t, e in zip(sources, texts, edited)]
    assert all(f.done() for f in futures), "leaving the block must answer every queued request"
    np.testing.assert_allclose([f.result() for f in futures], torch_scorer.score(sources, texts, edited),
                               atol=FP32_TOL, rtol=0)
    assert scorer.engine.stats()["closed_drain"] == 1
    with pytest.raises(RuntimeClosedError):
        scorer.submit(sources[0], texts[0], edited[0])
    scorer.close()  # idempotent


def test_other_backends_have_a_no_op_context_and_no_submit(torch_scorer):  # noqa: F811
    with torch_scorer as same:
        assert same is torch_scorer
    assert torch_scorer.score(images(1, 56, 50), TEXTS[:1], images(1, 56, 51)).shape == (1,)  # still usable
    with pytest.raises(NotImplementedError, match="backend='runtime'"):
        torch_scorer.submit(images(1, 56, 50)[0], TEXTS[0], images(1, 56, 51)[0])


def test_evaluate_with_the_runtime_backend_equals_the_compiled_one(runtime_package, tmp_path):
    from jrm_engine.evaluate import main

    scores = {}
    for backend in ("runtime", "compiled"):
        out = tmp_path / backend
        assert main([str(runtime_package), "--bench", "synthetic", "--synthetic-n", "6", "--backend", backend,
                     "--batch-size", "5", "--out", str(out), "--quiet"]) == 0
        scores[backend] = json.loads((out / "scores.json").read_text())
        assert json.loads((out / "report.json").read_text())["backend"] == backend
    assert scores["runtime"].keys() == scores["compiled"].keys() and len(scores["runtime"]) == 12
    for key, value in scores["compiled"].items():
        assert abs(scores["runtime"][key] - value) <= FP32_TOL, key
