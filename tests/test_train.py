"""End to end on the CPU: train a few steps, checkpoint, interrupt, resume, score."""
import json

import pytest
import torch
from safetensors.torch import load_file

import jrm_engine.train as train_mod
from jrm_engine.checkpoint import latest_checkpoint
from jrm_engine.train import build_parser, config_from_args, main, train

pytestmark = pytest.mark.slow


def smoke_config(out, *extra):
    return config_from_args(build_parser().parse_args(["--preset", "smoke", "--out", str(out), "--quiet", *extra]))


def weights(ckpt):
    return load_file(ckpt / "backbone" / "model.safetensors") | load_file(ckpt / "reward_head.safetensors")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    final = train(smoke_config(out), quiet=True)
    return out, final


def test_run_writes_checkpoint_metrics_and_plot(finished_run):
    out, final = finished_run
    assert 0.0 <= final["accuracy"] <= 1.0 and final["effective_rank"] >= 1.0
    assert final["effective_rank_centred"] >= 1.0
    low, high = final["accuracy_95ci"]
    assert 0.0 <= low <= final["accuracy"] <= high <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    evals = [r for r in rows if r["kind"] == "eval"]
    # During training the first train.eval_pairs held-out pairs; the last step's evaluation is the final one (all
    # of them), not repeated after the loop.
    assert [(r["step"], r["pairs"]) for r in evals] == [(2, 8), (4, 16)] and final["pairs"] == 16
    last_eval = evals[-1]
    assert last_eval["accuracy"] == final["accuracy"] and last_eval["effective_rank"] == final["effective_rank"]
    assert (out / "training_curves.png").stat().st_size > 0
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-000004"
    assert (out / "checkpoints" / "latest" / "jrm.json").is_file()  # usable as a path by every command
    assert json.loads((ckpt / "jrm.json").read_text())["train"]["max_steps"] == 4  # resolved config saved
    assert not list((out / "checkpoints").glob("*.pt*"))  # safetensors only, no pickle


def test_interrupted_and_resumed_run_ends_with_the_same_weights(finished_run, tmp_path, monkeypatch):
    out, _ = finished_run
    original = train_mod.save_checkpoint

    def save_then_crash(out_dir, step, *args, **kwargs):
        path = original(out_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the process dies right after the step-2 checkpoint
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(smoke_config(tmp_path), quiet=True)
    monkeypatch.setattr(train_mod, "save_checkpoint", original)
    assert latest_checkpoint(tmp_path).name == "step-000002"
    # a half-written checkpoint (the temp folder of an interrupted save) is never picked up
    (tmp_path / "checkpoints" / ".step-000003.tmp").mkdir()
    train(smoke_config(tmp_path), resume=True, quiet=True)
    resumed, straight = weights(latest_checkpoint(tmp_path)), weights(latest_checkpoint(out))
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_resuming_a_finished_run_evaluates_it_again(finished_run):
    out, final = finished_run
    again = train(smoke_config(out), resume=True, quiet=True)  # no step left to run: the evaluation is the final one
    assert again["accuracy"] == final["accuracy"] and again["effective_rank"] == final["effective_rank"]


def test_resume_refuses_a_different_config(finished_run):
    out, _ = finished_run
    with pytest.raises(ValueError, match="config differs"):
        train(smoke_config(out, "--alpha", "0.1"), resume=True, quiet=True)


def test_checkpoint_scores_through_the_scoring_api(finished_run):
    scoring = pytest.importorskip("jrm_engine.scoring")
    from jrm_engine.data.synthetic import SyntheticEditDataset
    from jrm_engine.model import RewardModel

    out, _ = finished_run
    ckpt = latest_checkpoint(out)
    pairs = [SyntheticEditDataset(4, seed=3, image_size=56, split="heldout")[i] for i in range(4)]
    scorer = scoring.Scorer.load(ckpt, backend="torch")
    got = scorer.score([p.source for p in pairs], [p.instruction for p in pairs], [p.a.image for p in pairs])
    model = RewardModel.from_pretrained(ckpt).eval()
    from jrm_engine.data.collate import PairCollator
    with torch.no_grad():
        ref = model(**PairCollator(model.layout, model.spec)(pairs).model_inputs()).rewards
    a_index = [2 * i + (1 if p.preference == "b" else 0) for i, p in enumerate(pairs)]
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float32), ref[a_index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_autocast_covers_training_steps_where_the_cpu_computes_bf16(monkeypatch, tmp_path, native):
    monkeypatch.setattr(train_mod, "computes_bf16_natively", lambda device: native)
    cfg, cpu = smoke_config(tmp_path), torch.device("cpu")
    with train_mod.autocast(cpu, cfg):
        assert torch.is_autocast_enabled("cpu") == native
    with train_mod.autocast(cpu, cfg, training=False):  # evaluation: the precision a checkpoint is scored in
        assert not torch.is_autocast_enabled("cpu")
    cfg.train.bf16 = False
    with train_mod.autocast(cpu, cfg):
        assert not torch.is_autocast_enabled("cpu")


def test_a_bf16_run_on_the_cpu_trains_in_bf16_and_saves_fp32_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "computes_bf16_natively", lambda device: True)
    losses = {}
    for bf16 in ("true", "false"):
        out = tmp_path / bf16
        train(smoke_config(out, "--set", f"train.bf16={bf16}"), quiet=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[bf16] = [r["loss"] for r in rows if r["kind"] == "train"]
    assert {t.dtype for t in weights(latest_checkpoint(tmp_path / "true")).values()} == {torch.float32}
    assert losses["true"] != losses["false"]  # the steps did run in bf16
    assert torch.isfinite(torch.tensor(losses["true"])).all()


@pytest.mark.parametrize("vision_lr", ["0", "1e-4"])
def test_vision_lr_freezes_or_slows_the_vision_tower(tmp_path, vision_lr):
    out = tmp_path / "run"
    train(smoke_config(out, "--set", "train.max_steps=2", "--set", f"train.vision_lr={vision_lr}"), quiet=True)
    start, end = load_file(out / "tiny-backbone" / "model.safetensors"), weights(latest_checkpoint(out))
    moved = {name: not torch.equal(start[name], end[name]) for name in start}
    vision = [name for name in moved if train_mod.is_vision_parameter(name)]
    text = [name for name in moved if name.startswith("model.layers.")]  # the saved (legacy) key layout
    assert vision and text and all(moved[name] for name in text)
    # Frozen: not one vision weight moves; 1e-4 against the text's 3e-3: every weight moves, by about 1e-4 a step
    # (Adam), far less than the text's.
    assert not any(moved[name] for name in vision) if vision_lr == "0" else all(moved[name] for name in vision)
    if vision_lr != "0":
        step = max((end[name] - start[name]).abs().max().item() for name in vision)
        assert 1e-5 < step <= 2 * 1e-4 * 1.01


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--alpha", "1.5", "--quiet"]) == 2
    assert "loss.alpha: must be in [0, 1]" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--backbone", str(tmp_path / "nope")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnx"), ("aoti", "compiled")])
def test_trained_checkpoint_exports_and_scores_the_same(finished_run, tmp_path, fmt, backend):
    """python -m jrm_engine.train -> jrm-export -> Scorer on the engine == Scorer on the checkpoint."""
    from jrm_engine.data.synthetic import SyntheticEditDataset
    from jrm_engine.export.cli import main as export_main
    from jrm_engine.scoring import Scorer

    out, _ = finished_run
    ckpt = latest_checkpoint(out)
    engine = tmp_path / f"scorer.{'pt2' if fmt == 'aoti' else 'onnx'}"
    extra = ["--device", "cpu"] if fmt == "aoti" else []
    assert export_main([str(ckpt), f"--{fmt}", str(engine), "--buckets", "16,32", "--max-batch", "4", *extra]) == 0
    pairs = [SyntheticEditDataset(3, seed=5, image_size=56, split="heldout")[i] for i in range(3)]
    args = ([p.source for p in pairs], [p.instruction for p in pairs], [p.b.image for p in pairs])
    reference = Scorer.load(ckpt, backend="torch").score(*args)
    got = Scorer.load(engine, backend=backend).score(*args)
    assert abs(got - reference).max() <= 1e-4
    group = Scorer.load(engine, backend=backend).score_group(pairs[0].source, pairs[0].instruction,
                                                              [p.a.image for p in pairs])
    alone = Scorer.load(ckpt, backend="torch").score([pairs[0].source] * 3, [pairs[0].instruction] * 3,
                                                      [p.a.image for p in pairs])
    assert abs(group - alone).max() <= 1e-4
