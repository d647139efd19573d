"""`jrm-export CHECKPOINT --onnx OUT.onnx | --trt OUT.plan | --aoti OUT.pt2`: compile a trained reward model."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DESCRIPTION = """\
Compile a trained jrm_engine checkpoint (the folder `python -m jrm_engine.train` saves) into a scoring engine.
Every engine takes source_pixels, edited_pixels uint8 [B,S,S,3], text_ids int64 [B,L] (instruction ids
right-padded with 0 to a text bucket) and text_lengths int64 [B], and returns rewards float32 [B] (and
log_sigma [B] for uncertainty heads). Batch and text length are dynamic: B in [1, --max-batch], L in
[smallest, largest bucket]. Images are fixed at the checkpoint's model.image_size; callers resize (the
Python Scorer does). Each engine is written with a runtime manifest (OUT.manifest.json) and the tokenizer
(OUT.tokenizer/) beside it: load it with jrm_engine.scoring.Scorer.load or the C++ runtime.

  --onnx  ONNX (dynamo exporter), then scored on onnxruntime against PyTorch: fails when they differ by
          more than 1e-4 (fp32). Weights over 2 GB go to OUT.onnx.data.
  --trt   ONNX as above, then a TensorRT plan (strongly typed, min/opt/max profile, timing cache).
          Needs the tensorrt package and a GPU; the plan only runs on the TensorRT version and GPU that
          built it (its manifest records both and loading refuses a mismatch). Untested on our CI.
  --aoti  An AOTInductor package (.pt2) for --device cpu or cuda, loadable from C++, and beside it the group
          package (OUT.group.pt2: one source and instruction encoded once for up to --max-group candidates),
          which `Scorer.score_group` uses; --no-group skips it (half the compile time).
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jrm-export", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint folder (backbone/, reward_head.safetensors, jrm.json)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model")
    out.add_argument("--trt", metavar="OUT.plan", help="write a TensorRT plan (via OUT.onnx)")
    out.add_argument("--aoti", metavar="OUT.pt2", help="write an AOTInductor package")
    p.add_argument("--buckets", default="16,32,64,128",
                   help="instruction-length buckets, comma separated (default: %(default)s); the largest is the "
                        "longest instruction an engine accepts")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (default: %(default)s)")
    p.add_argument("--max-group", type=int, default=16,
                   help="--aoti: most candidates per call of the group package (default: %(default)s)")
    p.add_argument("--no-group", action="store_true", help="--aoti: skip the group package")
    p.add_argument("--opt-batch", type=int, default=None,
                   help="batch TensorRT tunes for (default: min(8, --max-batch))")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="backbone dtype in the engine; the reward head stays fp32 (default: %(default)s)")
    p.add_argument("--device", default=None, help="--aoti: cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--positions", choices=["sequential", "mrope"], default="mrope",
                   help="language-model positions; 'mrope' (Qwen's 3-D image positions) is what RewardModel "
                        "trains and scores with (default: %(default)s)")
    p.add_argument("--workspace-gb", type=float, default=8.0, help="--trt: builder workspace limit")
    p.add_argument("--timing-cache", default=None, help="--trt: timing cache file (default: OUT.timing.cache)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as e:  # a clear one-line error for the user, not a traceback
        from .onnx_export import ParityError
        from .tensorrt_build import PlanMismatch, TensorRTUnavailable

        if isinstance(e, (ValueError, OSError, TensorRTUnavailable, PlanMismatch, ParityError)):
            print(f"jrm-export: error: {e}", file=sys.stderr)
            return 2
        raise


def run(args: argparse.Namespace) -> int:
    from .settings import ExportSettings

    try:
        buckets = tuple(int(b) for b in args.buckets.split(","))
    except ValueError:
        raise ValueError(f"--buckets {args.buckets!r}: expected comma-separated integers") from None
    if args.trt:
        from .tensorrt_build import gpu_compute_capability, import_tensorrt

        import_tensorrt()  # fail before minutes of export work
        gpu_compute_capability()
    import torch

    from .load import graph_from_model, load_reward_model
    from .manifest import checkpoint_sha256

    from jrm_engine.checkpoint import verify_safetensors

    verify_safetensors(args.checkpoint)
    model = load_reward_model(args.checkpoint)
    ckpt_hash = checkpoint_sha256(args.checkpoint)
    settings = ExportSettings(buckets=buckets, max_batch=args.max_batch, opt_batch=args.opt_batch or min(8, args.max_batch),
                              max_group=args.max_group, positions=args.positions, dtype=args.dtype)
    engine = Path(args.aoti or args.onnx or args.trt)
    tokenizer_dir = save_tokenizer(model.tokenizer, engine)
    if args.aoti:
        from .aoti import compile_package

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        graph = graph_from_model(model, positions=settings.positions, dtype=settings.dtype, device=device)
        manifest = compile_package(graph, settings, args.aoti, device=device, group=not args.no_group,
                                   checkpoint_hash=ckpt_hash, tokenizer=tokenizer_dir.name)
    else:
        from .onnx_export import check_parity, export_onnx

        onnx_path = Path(args.onnx) if args.onnx else Path(args.trt).with_suffix(".onnx")
        graph = graph_from_model(model, positions=settings.positions, dtype=settings.dtype, device="cpu")
        export_onnx(graph, settings, onnx_path)
        if settings.dtype == "float32":
            worst = check_parity(graph, settings, onnx_path)
            print(f"onnxruntime vs PyTorch: largest |difference| {worst:.3g} (limit 1e-4)")
        else:
            print(f"onnxruntime parity not checked: its CPU provider has no {settings.dtype} kernels")
        if args.onnx:
            from .manifest import build_manifest, manifest_path, write_json_atomic

            manifest = write_json_atomic(manifest_path(onnx_path), build_manifest(
                graph, settings, backend="onnx", device="cpu", package=onnx_path, checkpoint_hash=ckpt_hash,
                tokenizer=tokenizer_dir.name))
        else:
            from .tensorrt_build import DEFAULT_WORKSPACE, build_engine

            workspace = int(args.workspace_gb * 1024**3) if args.workspace_gb else DEFAULT_WORKSPACE
            manifest = build_engine(onnx_path, args.trt, graph, settings, workspace_bytes=workspace,
                                    timing_cache=args.timing_cache, checkpoint_hash=ckpt_hash,
                                    tokenizer=tokenizer_dir.name)
    print(f"wrote {engine} and {manifest}")
    return 0


def save_tokenizer(tokenizer, engine: Path) -> Path:
    """The instruction tokenizer beside the engine, so a Scorer needs only the engine's folder."""
    folder = engine.with_name(engine.stem + ".tokenizer")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
