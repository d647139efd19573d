"""Reward-scoring throughput on one GPU: Hugging Face eager vs the scoring graph (eager, torch.compile), independent
and grouped, for a Qwen2.5-VL-3B-shaped model with random bf16 weights at 448 px and 64 instruction tokens.

    python benchmarks/gpu/scoring.py                      # H100: writes $OUT/<gpu>-scoring.json, table last
    python benchmarks/gpu/scoring.py --aoti-out DIR       # also an AOTInductor package + manifest for the runtime
    python benchmarks/gpu/scoring.py --tiny               # the same logic on a tiny model, CPU is fine

No network: the model is built from a config, directly on the GPU in bf16. Sections run in order of importance
and the script skips what would overrun `--budget-s` (recorded in the JSON), so it finishes in about 5 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


from jrm_engine.export import GroupScorer, ScoringGraph  # noqa: E402
from jrm_engine.model import RewardHead  # noqa: E402
from jrm_engine.sequence import SequenceLayout, TokenIds  # noqa: E402
from jrm_engine.vision import VisionSpec, pixels_to_patches  # noqa: E402

# Qwen2.5-VL-3B shapes (config.json of the public checkpoint).
FULL = dict(text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                      intermediate_size=11008, vocab_size=151936, mrope=[16, 24, 24], rope_theta=1e6),
            vision=dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=2048,
                        fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
            image_size=448, text_len=64, batches=[1, 8, 32], group=12)
TINY = dict(text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=512, mrope=[2, 3, 3], rope_theta=1e6),
            vision=dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                        fullatt_block_indexes=[1], window_size=112),
            image_size=224, text_len=16, batches=[1, 4], group=3)
FLOP_PER_CANDIDATE = 5.8e12  # ../shared/docs/anchors.md section 2: vision 2.6 + language 3.3 TFLOP (3B, 448 px)
IMAGE_TOKEN, VISION_START, VISION_END, REWARD = 151655, 151652, 151653, 151665


def build_model(shape: dict, device: str, dtype: torch.dtype):
    """Random-weight Qwen2.5-VL + reward head, created on `device` in `dtype` (no CPU copy of the weights)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    t, v = shape["text"], shape["vision"]
    vocab = max(t["vocab_size"], REWARD + 1)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=t["hidden_size"], num_hidden_layers=t["num_hidden_layers"],
                         num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"],
                         intermediate_size=t["intermediate_size"], vocab_size=vocab, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": t["rope_theta"],
                                          "mrope_section": t["mrope"]}, tie_word_embeddings=True),
        vision_config=dict(depth=v["depth"], hidden_size=v["hidden_size"], num_heads=v["num_heads"],
                           intermediate_size=v["intermediate_size"], out_hidden_size=v["out_hidden_size"],
                           fullatt_block_indexes=v["fullatt_block_indexes"], window_size=v["window_size"],
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=IMAGE_TOKEN, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            backbone = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    torch.manual_seed(0)
    head = RewardHead(t["hidden_size"], "mlp", 1).to(device)  # fp32, as in RewardModel
    ids = TokenIds(image=IMAGE_TOKEN, vision_start=VISION_START, vision_end=VISION_END, reward=REWARD, eos=0, pad=0)
    spec = VisionSpec(image_size=shape["image_size"])
    # The attributes ScoringGraph and hf_forward read from a RewardModel. Random token ids need no tokenizer, and
    # hf_forward uses only layout.prompt_ids, which takes ids and checks no length.
    layout = SequenceLayout(tokenizer=None, ids=ids, image_tokens=spec.num_tokens, max_length=sys.maxsize)
    return SimpleNamespace(backbone=backbone, head=head, spec=spec, token_ids=ids, layout=layout)


def make_inputs(model, batch: int, text_len: int, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    s = model.spec.image_size
    pix = lambda: torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, generator=g).to(device)
    text_ids = torch.randint(10, 150000, (batch, text_len), generator=g).to(device)  # below the special ids
    lengths = torch.full((batch,), text_len, dtype=torch.long, device=device)
    return pix(), pix(), text_ids, lengths


def hf_forward(model, source, edited, text_ids, lengths):
    """RewardModel.forward's computation: HF backbone (its own preprocessing path) + head at <reward>."""
    b = text_ids.shape[0]
    spec, ids = model.spec, model.token_ids
    seq = torch.tensor([model.layout.prompt_ids(row) for row in text_ids.tolist()], device=source.device)
    images = torch.stack([source, edited], dim=1).flatten(0, 1)
    patches = pixels_to_patches(images, spec).reshape(-1, spec.patch_dim)
    grid = torch.tensor([[1, spec.grid, spec.grid]] * (2 * b), device=source.device)
    out = model.backbone.model(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values=patches,
                               image_grid_thw=grid, mm_token_type_ids=(seq == ids.image).int(), use_cache=False)
    return model.head(out.last_hidden_state[:, -1])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, device: str, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    p20, p50, p80 = np.percentile(np.array(times) * 1e3, [20, 50, 80])
    return {"p20_ms": round(float(p20), 3), "p50_ms": round(float(p50), 3), "p80_ms": round(float(p80), 3)}


def gpu_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model (logic check, CPU is fine)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")),
                   help="folder for <gpu>-scoring.json (default: $OUT, else benchmarks/results)")
    p.add_argument("--aoti-out", default=None, help="also write an AOTInductor package + manifest here")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode (the device session uses max-autotune)")
    p.add_argument("--aoti-group", action="store_true", help="with --aoti-out: also the group package")
    p.add_argument("--aoti-only", action="store_true",
                   help="with --aoti-out: only the parity check and the package, no timings (for the runtime benchmark)")
    p.add_argument("--budget-s", type=float, default=270.0, help="skip sections that would start after this")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per point (default 10, tiny 3)")
    p.add_argument("--depth", default=None, metavar="TEXT,VISION",
                   help="blocks at the 3B width, e.g. 2,2: the 3B layer shapes at a CPU-sized compile")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU (bfloat16 on CPU checks the bf16 export logic)")
    args = p.parse_args(argv)

    start = time.perf_counter()
    shape = TINY if args.tiny else FULL
    if args.depth:
        text_depth, vision_depth = (int(n) for n in args.depth.split(","))
        if text_depth < 1 or vision_depth < 1:
            p.error(f"--depth {args.depth}: both block counts must be >= 1")
        # The last vision block keeps full attention, as the 3B's last block does (index 31 of 32).
        shape = {**shape, "text": {**shape["text"], "num_hidden_layers": text_depth},
                 "vision": {**shape["vision"], "depth": vision_depth, "fullatt_block_indexes": [vision_depth - 1]}}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if device.startswith("cuda") else torch.float32
    iters = args.iters or (3 if args.tiny else 10)
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    graph = ScoringGraph(model).eval()
    group = GroupScorer(graph)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.backbone.parameters())
    print(f"model: {params / 1e9:.2f} B params, {dtype}, built on {device} in {build_s:.1f} s", flush=True)

    text_len, g_size = shape["text_len"], shape["group"]
    results, skipped, notes = [], [], {}
    over = lambda: time.perf_counter() - start > args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    depth = f"-depth{args.depth.replace(',', 'x')}" if args.depth else ""
    path = out / f"{gpu_slug(device)}{'-tiny' if args.tiny else ''}{depth}-scoring.json"
    parity: dict = {}

    def save(complete: bool) -> None:
        """Rewritten (temp file + rename) after every timing, so a run killed by its timeout keeps its figures."""
        report = {
            "benchmark": "scoring", "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "dtype": str(dtype).replace("torch.", ""), "params": params, "image_size": shape["image_size"],
            "text_len": text_len, "group": g_size, "shape": shape, "model_build_s": round(build_s, 1),
            "parity": parity, "results": results, "skipped_over_budget": skipped, "notes": notes,
            "complete": complete, "total_s": round(time.perf_counter() - start, 1),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)

    def record(path: str, mode: str, batch: int, timing: dict) -> None:
        per_s = batch / (timing["p50_ms"] / 1e3)
        row = {"path": path, "mode": mode, "batch": batch, **timing, "candidates_per_s": round(per_s, 2),
               "tflops": round(per_s * FLOP_PER_CANDIDATE / 1e12, 1) if not args.tiny else None}
        results.append(row)
        save(complete=False)
        print(f"  {path:<16} {mode:<12} batch {batch:>3}: p50 {timing['p50_ms']:9.2f} ms  {per_s:8.2f} cand/s",
              flush=True)

    # 1. Parity: graph vs Hugging Face on the same inputs (bf16 on the GPU).
    with torch.no_grad():
        inputs = make_inputs(model, 4, text_len, 0, device)
        ref = hf_forward(model, *inputs).float()
        ours = graph(*inputs).float()
        grouped = group(inputs[0][:1], inputs[2][:1], inputs[3][:1], inputs[1]).float()
        single = graph(inputs[0][:1].expand(4, -1, -1, -1), inputs[1], inputs[2][:1].expand(4, -1),
                       inputs[3][:1].expand(4)).float()
    scale = max(ref.abs().max().item(), 1e-6)
    parity = {"hf_rewards": ref.tolist(), "graph_rewards": ours.tolist(),
              "max_abs_diff": (ours - ref).abs().max().item(), "reward_scale": scale,
              "group_vs_independent_max_abs_diff": (grouped - single).abs().max().item()}
    # bf16 through ~70 blocks: differences of a few % of the reward scale are rounding, not a bug.
    tol = 5e-2 * scale if dtype == torch.bfloat16 else 1e-4
    parity["tolerance"] = tol
    parity["ok"] = parity["max_abs_diff"] <= tol and parity["group_vs_independent_max_abs_diff"] <= tol
    print(f"parity: graph vs HF max |diff| {parity['max_abs_diff']:.3g} (scale {scale:.3g}, tol {tol:.3g}); "
          f"group vs independent {parity['group_vs_independent_max_abs_diff']:.3g}", flush=True)
    save(complete=False)

    # 2. Independent scoring: HF eager, graph eager.
    timings = not args.aoti_only
    with torch.no_grad():
        for batch in shape["batches"]:
            inputs = make_inputs(model, batch, text_len, batch, device)
            for name, fn in (("hf_eager", hf_forward), ("graph_eager", None)):
                if not timings or over():
                    skipped.append(f"{name} batch {batch}")
                    continue
                call = (lambda: hf_forward(model, *inputs)) if fn else (lambda: graph(*inputs))
                record(name, "independent", batch, time_it(call, device, 2, iters))
        # 3. Grouped (G candidates, one source + instruction): graph eager.
        if timings and not over():
            source, edited, text_ids, lengths = make_inputs(model, g_size, text_len, 99, device)
            call = lambda: group(source[:1], text_ids[:1], lengths[:1], edited)
            record("graph_eager", f"group{g_size}", g_size, time_it(call, device, 2, iters))
            if not over():
                call = lambda: hf_forward(model, source[:1].expand(g_size, -1, -1, -1), edited,
                                          text_ids[:1].expand(g_size, -1), lengths[:1].expand(g_size))
                record("hf_eager", f"group{g_size}", g_size, time_it(call, device, 2, iters))
        else:
            skipped.append("group eager")

    # 4. torch.compile of the same graph; compile time (first call per shape) reported apart.
    if timings and not args.no_compile:
        compiled = torch.compile(graph, mode=args.compile_mode)
        compiled_group = torch.compile(group, mode=args.compile_mode)
        notes["compile_mode"] = args.compile_mode
        with torch.no_grad():
            for batch in shape["batches"][::-1]:  # largest first: the headline number
                if over():
                    skipped.append(f"graph_compile batch {batch}")
                    continue
                inputs = make_inputs(model, batch, text_len, batch, device)
                for t in inputs:  # one compile serves every batch > 1 (size 1 is specialised: a second one)
                    torch._dynamo.mark_dynamic(t, 0)
                t0 = time.perf_counter()
                compiled(*inputs)
                sync(device)
                notes[f"compile_s_batch{batch}"] = round(time.perf_counter() - t0, 1)
                record("graph_compile", "independent", batch, time_it(lambda: compiled(*inputs), device, 2, iters))
            if not over():
                source, edited, text_ids, lengths = make_inputs(model, g_size, text_len, 99, device)
                call = lambda: compiled_group(source[:1], text_ids[:1], lengths[:1], edited)
                t0 = time.perf_counter()
                call()
                sync(device)
                notes["compile_s_group"] = round(time.perf_counter() - t0, 1)
                record("graph_compile", f"group{g_size}", g_size, time_it(call, device, 2, iters))
            else:
                skipped.append("group compile")

    # 5. Optional AOTInductor package for the C++ runtime benchmark.
    if args.aoti_out:
        if over() and timings:
            skipped.append("aoti package")
        else:
            from jrm_engine.export.aoti import compile_package
            from jrm_engine.export.settings import ExportSettings

            batch_max = max(shape["batches"])
            settings = ExportSettings(buckets=(text_len, 2 * text_len), max_batch=batch_max,
                                      opt_batch=min(8, batch_max), max_group=g_size,  # runtime.py's group size
                                      dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
            t0 = time.perf_counter()
            manifest = compile_package(graph, settings, Path(args.aoti_out) / "scorer.pt2", device=device,
                                       group=args.aoti_group)
            notes["aoti_compile_s"] = round(time.perf_counter() - t0, 1)
            notes["aoti_manifest"] = str(manifest)

    save(complete=True)
    print(f"\nwrote {path}\n")
    print(f"{'path':<16} {'mode':<12} {'batch':>5} {'p50 ms':>10} {'cand/s':>9}")
    for r in results:
        print(f"{r['path']:<16} {r['mode']:<12} {r['batch']:>5} {r['p50_ms']:>10.2f} {r['candidates_per_s']:>9.2f}")
    print(f"parity ok: {parity['ok']} (max |diff| {parity['max_abs_diff']:.3g}); skipped: {skipped or 'none'}")
    return 0 if parity["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
