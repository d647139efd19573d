"""jrm_engine.scoring.Scorer: every backend gives RewardModel's rewards; bad inputs get errors naming them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jrm_engine.scoring import BACKENDS, Scorer
from jrm_engine.vision import load_image

from test_export import FP32_TOL, aoti_package, checkpoint, hf_rewards, onnx_model, small_model  # noqa: F401

INSTRUCTIONS = ["make the red circle blue", "remove the square", "add a green circle .", "make it bigger"]


def images(n, size, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def torch_scorer(checkpoint):  # noqa: F811
    return Scorer.load(checkpoint, backend="torch", device="cpu", max_batch=3)


def reference(model, sources, instructions, edited):
    s = model.spec.image_size
    pix = lambda ims: torch.from_numpy(np.stack([load_image(im, s) for im in ims]))
    texts = [model.layout.text_ids(t) for t in instructions]
    return hf_rewards(model, pix(sources), pix(edited), texts).numpy()


def test_torch_backend_matches_reward_model(torch_scorer, small_model):  # noqa: F811
    sources, edited = images(4, 56, 0), images(4, 56, 1)
    got = torch_scorer.score(sources, INSTRUCTIONS, edited)  # max_batch 3: two chunks, two buckets
    np.testing.assert_allclose(got, reference(small_model, sources, INSTRUCTIONS, edited), atol=FP32_TOL, rtol=0)


def test_group_equals_independent(torch_scorer):
    source, edited = images(1, 56, 2)[0], images(5, 56, 3)
    grouped = torch_scorer.score_group(source, INSTRUCTIONS[0], edited)
    independent = torch_scorer.score([source] * 5, [INSTRUCTIONS[0]] * 5, edited)
    np.testing.assert_allclose(grouped, independent, atol=FP32_TOL, rtol=0)


def test_inputs_of_another_size_and_kind_are_resized(torch_scorer, tmp_path):
    big = images(1, 97, 4)[0]
    path = tmp_path / "edit.png"
    Image.fromarray(images(1, 70, 5)[0]).save(path)
    got = torch_scorer.score([Image.fromarray(big)], [INSTRUCTIONS[1]], [path])
    same = torch_scorer.score([load_image(big, 56)], [INSTRUCTIONS[1]], [load_image(path, 56)])
    np.testing.assert_array_equal(got, same)


def test_corrupt_image_names_the_input(torch_scorer, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"edited\[1\]: cannot read image"):
        torch_scorer.score(images(2, 56, 6), INSTRUCTIONS[:2], [images(1, 56, 7)[0], bad])


def test_too_long_and_empty_instructions(torch_scorer):
    longest = torch_scorer.engine.buckets[-1]
    with pytest.raises(ValueError, match=r"instructions\[0\]: .* exceeds the largest text bucket"):
        torch_scorer.score(images(1, 56, 8), [" ".join(["red"] * (longest + 1))], images(1, 56, 9))
    with pytest.raises(ValueError, match=r"instructions\[0\]: empty"):
        torch_scorer.score(images(1, 56, 8), ["  "], images(1, 56, 9))


def test_unknown_backend_lists_the_available_ones(checkpoint):  # noqa: F811
    with pytest.raises(ValueError, match="available: .*compiled.*onnx.*tensorrt.*torch"):
        Scorer.load(checkpoint, backend="nope")
    assert {"torch", "compiled", "onnx", "tensorrt"} <= set(BACKENDS)


@pytest.mark.parametrize("backend", ["compiled", "onnx"])
def test_exported_backends_match_torch(backend, torch_scorer, small_model, aoti_package, onnx_model):  # noqa: F811
    from jrm_engine.export.cli import save_tokenizer

    path = aoti_package[0] if backend == "compiled" else onnx_model[0]
    if backend == "onnx":  # the session fixture wrote the model only; add what jrm-export writes beside it
        from jrm_engine.export.manifest import build_manifest, manifest_path, write_json_atomic
        from test_export import SETTINGS

        write_json_atomic(manifest_path(path), build_manifest(onnx_model[1], SETTINGS, backend="onnx",
                                                              device="cpu", package=path, checkpoint_hash=None))
    save_tokenizer(small_model.tokenizer, path)
    scorer = Scorer.load(path, backend=backend)
    sources, edited = images(4, 56, 10), images(4, 56, 11)
    texts = ["make the red circle", "remove it", "add a square", "bigger"]  # fit the exported 16-token bucket
    np.testing.assert_allclose(scorer.score(sources, texts, edited), torch_scorer.score(sources, texts, edited),
                               atol=1e-4 if backend == "onnx" else FP32_TOL, rtol=0)
    np.testing.assert_allclose(scorer.score_group(sources[0], texts[0], edited),
                               torch_scorer.score_group(sources[0], texts[0], edited), atol=1e-4, rtol=0)
    # The compiled package's manifest names its group package: the source is encoded once there too.
    assert (scorer.engine.run_group is not None) == (backend == "compiled")
