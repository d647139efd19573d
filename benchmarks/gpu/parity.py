"""bf16 parity of the scoring graph, judged the way the anchors judge kernels: against an fp32 truth.

    python benchmarks/gpu/parity.py                                  # 3B shape, full depth (GPU)
    python benchmarks/gpu/parity.py --text-layers 12 --vision-depth 12 --device cpu   # what fits a small CPU

Graph and Hugging Face bf16 rewards differ by a few % of the reward scale on random weights. That alone cannot
say whether the graph is wrong or both are rounded differently. Here the same random weights run three ways:
Hugging Face in fp32 (the truth; in fp32 the graph matches it to 1e-7), Hugging Face in bf16, the graph in bf16.
The graph passes when its error against the truth is no worse than Hugging Face's own bf16 error plus a small
tolerance. Writes `$OUT/<device>-parity.json` and prints the errors.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring import FULL, build_model, gpu_slug, hf_forward, make_inputs  # noqa: E402

from jrm_engine.export import ScoringGraph  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--text-layers", type=int, default=FULL["text"]["num_hidden_layers"])
    p.add_argument("--vision-depth", type=int, default=FULL["vision"]["depth"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed excess error, fraction of the scale")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = p.parse_args(argv)

    shape = copy.deepcopy(FULL)
    shape["text"]["num_hidden_layers"] = args.text_layers
    shape["vision"]["depth"] = args.vision_depth
    # Keep the 3B pattern of a full-attention block closing every 8 windowed ones, within the chosen depth.
    shape["vision"]["fullatt_block_indexes"] = [i for i in range(7, args.vision_depth, 8)] or [args.vision_depth - 1]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(shape, args.device, torch.float32)
    inputs = make_inputs(model, args.batch, shape["text_len"], 0, args.device)
    with torch.no_grad():
        truth = hf_forward(model, *inputs).double().flatten()
        graph32 = ScoringGraph(model).eval()(*inputs).double().flatten()
        model.backbone.to(torch.bfloat16)  # same weights, rounded; the head stays fp32 as in RewardModel
        hf16 = hf_forward(model, *inputs).double().flatten()
        graph16 = ScoringGraph(model).eval()(*inputs).double().flatten()
    scale = truth.abs().max().item()
    err = lambda x: (x - truth).abs().max().item() / scale  # noqa: E731
    report = {
        "benchmark": "parity", "device": args.device, "torch": torch.__version__,
        "shape": {"text_layers": args.text_layers, "vision_depth": args.vision_depth, "batch": args.batch,
                  "image_size": shape["image_size"], "text_len": shape["text_len"],
                  "fullatt_block_indexes": shape["vision"]["fullatt_block_indexes"]},
        "reward_scale": scale,
        "fp32_graph_vs_truth": err(graph32), "bf16_hf_vs_truth": err(hf16), "bf16_graph_vs_truth": err(graph16),
        "bf16_graph_vs_bf16_hf": (graph16 - hf16).abs().max().item() / scale,
        "tolerance": args.tolerance, "seconds": round(time.perf_counter() - t0, 1),
        "rewards": {"truth": truth.tolist(), "hf_bf16": hf16.tolist(), "graph_bf16": graph16.tolist()},
    }
    report["ok"] = report["bf16_graph_vs_truth"] <= report["bf16_hf_vs_truth"] + args.tolerance
    path = Path(args.out) / f"{gpu_slug(args.device)}-parity-text{args.text_layers}-vision{args.vision_depth}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"errors as a fraction of the reward scale {scale:.4g} (max over {args.batch} candidates):")
    for key in ("fp32_graph_vs_truth", "bf16_hf_vs_truth", "bf16_graph_vs_truth", "bf16_graph_vs_bf16_hf"):
        print(f"  {key:<24}{report[key]:.4%}")
    print(f"graph bf16 error <= HF bf16 error + {args.tolerance:.0%}: {report['ok']}  (wrote {path})")
    return report


if __name__ == "__main__":
    main()
