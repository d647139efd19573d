"""EditReward-style parquet loading: host memory and time of building the dataset (one streaming, validating pass)
and of reading random rows, against reading the whole table as the loader did before (`pq.read_table`).

    pytest benchmarks/test_bench_loaders.py --benchmark-json=benchmarks/results/cpu-loaders.json     # CI size
    python benchmarks/test_bench_loaders.py --rows 1000000 --out benchmarks/results/cpu-2core-loaders-1m.json

Each measurement runs in a fresh subprocess and reports its peak RSS (`ru_maxrss`) and that peak minus the RSS
after imports (torch and pyarrow come in with the package): an upper bound on the loader's own memory (the import
itself may have set the peak). The file has EditReward-Data's columns with three embedded images per row: a
valid 8 x 8 PNG followed by `IMAGE_PAD` incompressible bytes (distinct per image, so parquet cannot dictionary-
encode them), written in row groups of `ROW_GROUP` rows as Hugging Face `datasets` does for image data.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CI_ROWS = 100_000  # at 20k rows both peaks were the imports' own (312.5 vs 312.4 MiB, fresh clone): no comparison
IMAGE_PAD = 200  # bytes after each PNG: ~270 bytes an image, ~0.85 KB a row
ROW_GROUP = 1000
RANDOM_READS = 2000


def write_parquet(path: Path, n_rows: int, seed: int = 0) -> Path:
    """An EditReward-Data-schema parquet file of n_rows pairs, written in slices so writing holds one slice."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="PNG")
    png = buf.getvalue()
    rng = np.random.default_rng(seed)
    verbs = ["make the square red", "remove the blue circle", "add a green square", "make the circle blue"]
    with pq.ParquetWriter(path, _schema()) as writer:
        for start in range(0, n_rows, ROW_GROUP):
            n = min(ROW_GROUP, n_rows - start)
            pad = rng.integers(0, 256, (3, n, IMAGE_PAD), dtype=np.uint8)
            image = lambda k: [{"bytes": png + pad[k, i].tobytes(), "path": None} for i in range(n)]
            votes = ["leftvote", "rightvote", "leftvote", "tie"]
            writer.write_table(pa.table({
                "dev_id": [f"r{start + i}" for i in range(n)],
                "instruction": [verbs[(start + i) % 4] for i in range(n)],
                "source_image": image(0), "left_image": image(1), "right_image": image(2),
                "vote_type": [votes[(start + i) % 4] for i in range(n)],
                "left_overall_score": rng.integers(0, 10, n).astype(np.float64),
                "right_overall_score": rng.integers(0, 10, n).astype(np.float64),
            }, schema=_schema()), row_group_size=ROW_GROUP)
    return path


def _schema() -> pa.Schema:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.schema([("dev_id", pa.string()), ("instruction", pa.string()), ("source_image", image),
                      ("left_image", image), ("right_image", image), ("vote_type", pa.string()),
                      ("left_overall_score", pa.float64()), ("right_overall_score", pa.float64())])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib() -> float:
    """The resident set now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(path: str, mode: str, random_reads: int) -> dict:
    """Runs in the subprocess: `stream` (load_editreward + random rows, one image decoded each) or `read_table`."""
    from jrm_engine.data.editreward import load_editreward
    from jrm_engine.vision import load_image

    base = _rss_mib()
    start = time.perf_counter()
    if mode == "read_table":
        rows = pq.read_table(path).to_pylist()
        return {"mode": mode, "rows": len(rows), "seconds": time.perf_counter() - start,
                "peak_rss_mib": _peak_mib(), "peak_over_imports_mib": _peak_mib() - base, "rss_after_imports_mib": base}
    dataset, report = load_editreward(path, quiet=True)
    build_s = time.perf_counter() - start
    build_rss = _rss_mib() - base
    order = np.random.default_rng(1).integers(0, len(dataset), random_reads)
    start = time.perf_counter()
    for i in order:
        load_image(dataset[int(i)].a.image, 28)
    read_s = time.perf_counter() - start
    index = dataset.file_rows.nbytes + dataset.preferences.nbytes + dataset.keys.nbytes
    return {"mode": mode, "rows": len(dataset), "kept": report.kept, "build_seconds": build_s,
            "build_rows_per_s": len(dataset) / build_s, "rss_growth_after_build_mib": build_rss,
            "random_reads": random_reads, "random_read_ms": 1000 * read_s / random_reads,
            "rss_growth_after_reads_mib": _rss_mib() - base, "peak_rss_mib": _peak_mib(),
            "peak_over_imports_mib": _peak_mib() - base, "rss_after_imports_mib": base, "index_bytes": index}


def measure(path: Path, mode: str, random_reads: int = RANDOM_READS) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
            f"from test_bench_loaders import _measure; "
            f"print(json.dumps(_measure({str(path)!r}, {mode!r}, {random_reads})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("loaders") / "pairs.parquet", CI_ROWS)


def test_streaming_memory_is_bounded(parquet_file, benchmark):
    """At CI size the streamed dataset already needs less than reading the table; its own peak is a few chunks
    plus the index, whatever the file's size (the 1M-row figure is in benchmarks/results/)."""
    streamed = measure(parquet_file, "stream")
    whole = measure(parquet_file, "read_table")
    benchmark.extra_info.update(streamed=streamed, read_table=whole, machine=platform.processor() or "cpu")
    assert streamed["kept"] == CI_ROWS
    assert streamed["peak_over_imports_mib"] < whole["peak_over_imports_mib"], (streamed, whole)
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are the extra_info; nothing here is timed


def test_random_row_read(parquet_file, benchmark):
    from jrm_engine.data.editreward import load_editreward

    dataset, _ = load_editreward(parquet_file, quiet=True)
    order = iter(np.random.default_rng(2).integers(0, len(dataset), 100_000).tolist())
    pair = benchmark(lambda: dataset[next(order)])
    assert pair.instruction


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--file", type=Path, default=Path("/tmp/jrm-loaders-bench.parquet"))
    parser.add_argument("--compare-rows", type=int, default=100_000,
                        help="also measure read_table on a file of this many rows (the whole-table baseline)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import pyarrow
    import torch

    results = {"machine": "2-core x86-64 CPU (shared with other jobs)", "python": platform.python_version(),
               "pyarrow": pyarrow.__version__, "torch": torch.__version__, "image_pad_bytes": IMAGE_PAD,
               "row_group": ROW_GROUP, "runs": []}
    for rows, modes in ((args.compare_rows, ("stream", "read_table")), (args.rows, ("stream",))):
        start = time.perf_counter()
        path = write_parquet(args.file, rows)
        write_s = time.perf_counter() - start
        for mode in modes:
            run = measure(path, mode)
            run.update(file_rows=rows, file_mib=path.stat().st_size / 2**20, write_seconds=write_s)
            results["runs"].append(run)
            print(json.dumps(run))
        path.unlink()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.out)  # atomic: a killed run leaves the previous figures
    return 0


if __name__ == "__main__":
    sys.exit(main())
