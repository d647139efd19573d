"""Scoring graph == RewardModel; grouped == independent; torch.export, AOTInductor, ONNX Runtime == eager graph.

Models are tiny and random; compiled artifacts are built once per session (AOTInductor on 2 CPU cores is slow).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from jrm_engine.backbone import build_tiny_backbone
from jrm_engine.config import load_config
from jrm_engine.model import RewardModel
from jrm_engine.vision import VisionSpec, pixels_to_patches

from jrm_engine.export import GroupScorer, ScoringGraph, pad_text
from jrm_engine.export.program import example_inputs, export_graph
from jrm_engine.export.settings import ExportSettings

WORDS = "make the red blue green circle square bigger remove add correct wrong no change . ,".split()
FP32_TOL = 1e-5
SETTINGS = ExportSettings(buckets=(4, 8, 16), max_batch=6, opt_batch=2)


def build_model(folder, image_size=56, vision_layers=3, fullatt=(1,), rank_loss="bt", seed=0) -> RewardModel:
    """A random tiny Qwen2.5-VL reward model; `fullatt` picks the vision blocks with full attention."""
    cfg = load_config("smoke", overrides={"model.image_size": image_size, "model.max_length": 2048,
                                          "model.tiny.vision_layers": vision_layers, "loss.rank_loss": rank_loss})
    spec = VisionSpec(image_size=image_size)
    build_tiny_backbone(folder, WORDS, cfg.model.tiny, spec, cfg.model.reward_token, seed=seed)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["fullatt_block_indexes"] = list(fullatt)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed + 1)  # the reward head
    return RewardModel.from_backbone(folder, cfg).eval()


def random_batch(model: RewardModel, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.spec.image_size
    pixels = lambda: torch.randint(0, 256, (len(lengths), s, s, 3), dtype=torch.uint8, generator=g)
    vocab = model.backbone.get_input_embeddings().num_embeddings
    texts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    return pixels(), pixels(), texts


def hf_rewards(model: RewardModel, source, edited, texts, mrope=True) -> torch.Tensor:
    """RewardModel's forward on the training layout (unpadded sequences, HF preprocessing)."""
    encoded = [model.layout.prompt_ids(t) for t in texts]
    length = max(map(len, encoded))
    ids = torch.full((len(encoded), length), model.token_ids.pad)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    images = torch.stack([im for pair in zip(source, edited) for im in pair])
    patches = pixels_to_patches(images, model.spec).reshape(-1, model.spec.patch_dim)
    grid = torch.tensor([[1, model.spec.grid, model.spec.grid]] * len(images))
    reward_pos = torch.tensor([len(e) - 1 for e in encoded])
    with torch.no_grad():
        if mrope:
            return model(ids, mask, patches, grid, reward_pos).rewards
        # Without token types Hugging Face falls back to 1-D positions on all three M-RoPE axes.
        out = model.backbone.model(input_ids=ids, attention_mask=mask, pixel_values=patches, image_grid_thw=grid,
                                   use_cache=False)
        return model.head(out.last_hidden_state[torch.arange(len(encoded)), reward_pos])


def assert_close(ours, ref, tol, what):
    ours, ref = torch.as_tensor(ours).float(), torch.as_tensor(ref).float()
    diff = (ours - ref).abs()
    if not bool((diff <= tol).all()):
        bad = torch.nonzero(diff.reshape(-1) > tol).reshape(-1)[:5].tolist()
        pytest.fail(f"{what}: max |diff| {diff.max().item():.3g} > {tol:g}; first bad indices {bad}: "
                    f"ours {ours.reshape(-1)[bad].tolist()} vs ref {ref.reshape(-1)[bad].tolist()}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("small") / "backbone")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, small_model):
    """The small model saved as a training checkpoint (the folder format `python -m jrm_engine.train` writes)."""
    folder = tmp_path_factory.mktemp("ckpt") / "final"
    small_model.save_pretrained(folder)
    return folder


# ---- the graph ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["sequential", "mrope"])
@pytest.mark.parametrize("image_size,fullatt", [
    (56, (1,)),  # one window covers the image
    (224, (1,)),  # 2x2 uniform windows of 64 patches: batched window attention
    (168, (0, 2)),  # 6x6 merged grid, 4-wide windows: uneven windows, block-diagonal mask
])
def test_graph_matches_reward_model(tmp_path, image_size, fullatt, positions):
    model = build_model(tmp_path / "bb", image_size=image_size, fullatt=fullatt)
    source, edited, texts = random_batch(model, [3, 7, 1, 5])
    ref = hf_rewards(model, source, edited, texts, mrope=positions == "mrope")
    graph = ScoringGraph(model, positions=positions).eval()
    ids, lengths = pad_text(texts, 9)
    with torch.no_grad():
        ours = graph(source, edited, ids, lengths)
    assert_close(ours, ref, FP32_TOL, f"graph vs RewardModel ({image_size} px, {positions})")
    assert ref.std() > 1e-4  # the rewards differ per input, so the comparison can fail


def test_windows_matter(tmp_path):
    """With 2x2 windows, treating every block as full attention changes the reward: the window path is tested."""
    model = build_model(tmp_path / "bb", image_size=224, fullatt=(1,))
    source, edited, texts = random_batch(model, [4, 2])
    graph = ScoringGraph(model).eval()
    ids, lengths = pad_text(texts, 4)
    with torch.no_grad():
        windowed = graph(source, edited, ids, lengths)
        graph.vision.full_blocks = frozenset(range(3))
        full = graph(source, edited, ids, lengths)
    assert (windowed - full).abs().max() > 1e-4


def test_uncertainty_head_outputs_sigma(tmp_path):
    model = build_model(tmp_path / "bb", rank_loss="bt_uncertainty")
    source, edited, texts = random_batch(model, [2, 5])
    ids, lengths = pad_text(texts, 8)
    with torch.no_grad():
        rewards, log_sigma = ScoringGraph(model)(source, edited, ids, lengths)
        ref = hf_rewards(model, source, edited, texts)  # [B, 2]
    assert_close(rewards, ref[:, 0], FP32_TOL, "mu")
    assert_close(log_sigma, ref[:, 1], FP32_TOL, "log sigma")


def test_bucket_padding_does_not_change_rewards(small_model):
    source, edited, texts = random_batch(small_model, [3, 1])
    graph = ScoringGraph(small_model).eval()
    with torch.no_grad():
        short = graph(source, edited, *pad_text(texts, 3))
        long = graph(source, edited, *pad_text(texts, 16))
    assert_close(long, short, FP32_TOL, "bucket 16 vs 3")


@pytest.mark.parametrize("positions", ["sequential", "mrope"])
def test_group_equals_independent(small_model, positions):
    graph = ScoringGraph(small_model, positions=positions).eval()
    group = GroupScorer(graph)
    source, edited, texts = random_batch(small_model, [6] * 5, seed=3)
    ids, lengths = pad_text(texts[:1], 8)
    with torch.no_grad():
        grouped = group(source[:1], ids, lengths, edited)
        independent = graph(source[:1].expand(5, -1, -1, -1), edited, ids.expand(5, -1), lengths.expand(5))
    assert_close(grouped, independent, FP32_TOL, "grouped vs independent")


def test_unsupported_backbone_lists_supported(small_model, monkeypatch):
    monkeypatch.setattr(small_model.backbone.config, "model_type", "qwen2_vl")
    with pytest.raises(ValueError, match="supported: qwen2_5_vl"):
        ScoringGraph(small_model)


def test_text_longer_than_largest_bucket_is_refused():
    with pytest.raises(ValueError, match="exceeds the largest text bucket"):
        SETTINGS.bucket_for(17)


# ---- torch.export -------------------------------------------------------------------------------------------
def test_torch_export_dynamic_batch_and_text(small_model):
    graph = ScoringGraph(small_model).eval()
    program = export_graph(graph, SETTINGS)
    run = program.module()
    for batch, text_len in [(1, 4), (3, 16), (6, 9)]:
        inputs = example_inputs(graph, batch, text_len, seed=batch)
        with torch.no_grad():
            assert_close(run(*inputs), graph(*inputs), FP32_TOL, f"exported, batch {batch}, text {text_len}")


# ---- AOTInductor --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def aoti_package(tmp_path_factory, small_model):
    from jrm_engine.export.aoti import compile_package

    graph = ScoringGraph(small_model).eval()
    path = tmp_path_factory.mktemp("aoti") / "scorer.pt2"
    manifest = compile_package(graph, SETTINGS, path, group=True, checkpoint_hash="abc")
    return path, manifest, graph


def test_aoti_group_package_matches_the_graph_per_candidate(aoti_package):
    from jrm_engine.export.aoti import group_package_path, load_package

    path, manifest, graph = aoti_package
    group = json.loads(manifest.read_text())["group"]
    assert group["package"] == group_package_path(path).name and group["max_group"] == SETTINGS.max_group
    run = load_package(group_package_path(path))
    for g, text_len in [(1, 4), (5, 16), (SETTINGS.max_group, 8)]:
        source, edited, ids, lengths = example_inputs(graph, g, text_len, seed=20 + g)
        with torch.no_grad():
            alone = graph(source[:1].expand(g, -1, -1, -1), edited, ids[:1].expand(g, -1), lengths[:1].expand(g))
            assert_close(run(source[:1], ids[:1], lengths[:1], edited), alone, FP32_TOL,
                         f"AOTI group of {g}, text {text_len}")


def test_aoti_package_matches_graph(aoti_package):
    from jrm_engine.export.aoti import load_package

    path, _, graph = aoti_package
    run = load_package(path)
    for batch, text_len in [(1, 4), (2, 16), (5, 8)]:
        inputs = example_inputs(graph, batch, text_len, seed=10 + batch)
        with torch.no_grad():
            assert_close(run(*inputs), graph(*inputs), FP32_TOL, f"AOTI, batch {batch}, text {text_len}")


def test_aoti_manifest_is_the_runtime_format(aoti_package):
    path, manifest, graph = aoti_package
    m = json.loads(manifest.read_text())
    assert m["format"] == "jrm-runtime-manifest" and m["version"] == 1 and m["backend"] == "aoti"
    assert m["inputs"] == ["source_pixels", "edited_pixels", "text_ids", "text_lengths"]
    assert m["outputs"] == ["rewards"] and m["head_outputs"] == 1 and m["pad_id"] == 0
    assert m["image_size"] == 56 and m["max_batch"] == 6 and m["vocab_size"] == graph.vocab_size
    assert [b["text_len"] for b in m["buckets"]] == [4, 8, 16]
    assert all(b["package"] == path.name for b in m["buckets"])
    from jrm_engine.export.manifest import file_sha256
    assert m["buckets"][0]["sha256"] == file_sha256(path)


# ---- ONNX ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory, small_model):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from jrm_engine.export.onnx_export import export_onnx

    graph = ScoringGraph(small_model).eval()
    # Forced external data: the >2 GB path, exercised on a tiny model.
    path = export_onnx(graph, SETTINGS, tmp_path_factory.mktemp("onnx") / "scorer.onnx", external_data=True)
    return path, graph


def test_onnxruntime_matches_graph(onnx_model):
    from jrm_engine.export.onnx_export import check_parity

    path, graph = onnx_model
    assert (path.parent / (path.name + ".data")).is_file()
    worst = check_parity(graph, SETTINGS, path)
    assert worst <= 1e-4


def test_onnx_parity_failure_is_loud(onnx_model):
    from jrm_engine.export.onnx_export import ParityError, check_parity

    path, graph = onnx_model
    with pytest.raises(ParityError, match="not a faithful export"):
        check_parity(graph, SETTINGS, path, tolerance=-1.0)


# ---- CLI ----------------------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jrm_engine.export.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_cli_help_explains():
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("--onnx", "--trt", "--aoti", "--buckets", "manifest", "1e-4"):
        assert word in out.stdout


def test_cli_trt_without_tensorrt_is_a_clear_error(checkpoint, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = run_cli(checkpoint, "--trt", tmp_path / "x.plan")
    assert out.returncode == 2
    assert "TensorRT is not installed" in out.stderr and "Traceback" not in out.stderr


def test_cli_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    out = run_cli(tmp_path, "--onnx", tmp_path / "x.onnx")
    assert out.returncode == 2 and "not a jrm_engine checkpoint" in out.stderr


def test_cli_onnx_end_to_end(checkpoint, tmp_path):
    out = run_cli(checkpoint, "--onnx", tmp_path / "scorer.onnx", "--buckets", "4,8", "--max-batch", "4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "onnxruntime vs PyTorch: largest |difference|" in out.stdout
    manifest = json.loads((tmp_path / "scorer.manifest.json").read_text())
    assert manifest["backend"] == "onnx" and manifest["tokenizer"] == "scorer.tokenizer"
    assert (tmp_path / "scorer.tokenizer").is_dir() and len(manifest["checkpoint_sha256"]) == 64


# ---- TensorRT (needs tensorrt and a GPU) --------------------------------------------------------------------
@pytest.mark.tensorrt
def test_tensorrt_plan_matches_graph_and_refuses_a_tampered_plan(onnx_model, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT cannot be installed on this machine (no NVIDIA stack)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from jrm_engine.export.tensorrt_build import PlanMismatch, build_engine, load_engine

    path, graph = onnx_model
    plan = tmp_path / "scorer.plan"
    build_engine(path, plan, graph, SETTINGS, workspace_bytes=1 << 30)
    engine = load_engine(plan)
    inputs = example_inputs(graph, 3, 8)
    with torch.no_grad():
        assert_close(engine(*inputs).cpu(), graph(*inputs), 1e-4, "TensorRT vs graph")
    plan.write_bytes(plan.read_bytes() + b"\0")
    with pytest.raises(PlanMismatch, match="SHA-256"):
        load_engine(plan)
