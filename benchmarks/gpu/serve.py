"""Device benchmark of the reward server (`jrm serve`) against the same engine's runtime called in-process.

    python benchmarks/gpu/serve.py --package OUT/scorer.pt2 --device cuda [--source-size 448] [--out FILE]

Needs a package compiled on this machine by this torch (`jrm-export ... --aoti`, tokenizer beside it) and the
extension built against it. The server is a `jrm serve` subprocess (its own GIL, as in production: the clients'
threads here would otherwise slow its event loop), on loopback. Requests are single candidates at the source size
(448 px by default, a sampler's output), formatted as the trainers' clients send them:
  - binary: RewardClient's `application/x-jrm-arrays` body, the arrays resized to the engine's size on the client
    (as RewardClient does), so the server parses and submits without decoding anything;
  - json: base64 PNG of the full-size images; the server decodes and resizes them (the cost the binary path avoids).
Both bodies are built before timing: a trainer encodes on its own machine. Measured, in one run:
  - inprocess: the runtime `Scorer.submit(...)` on the arrays the binary body carries, 1/8/64 closed-loop clients;
  - http-binary, http-json: the same requests over HTTP, 1/8/64 closed-loop clients (one kept-alive connection
    each);
  - added_p50_ms: the single-client p50 over HTTP minus in-process, per format (the server's own added latency
    per request; the two are measured one after the other, never at once, see measure_all);
  - decode_per_image: the server's JSON decode (`payload.decode_score`: base64 + PNG decode) per image.
Writes `$OUT/<device>-serve.json` (or `--out`). The CPU-sized pytest version is benchmarks/test_bench_serve.py,
which imports the functions below.
"""
from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime import gpu_slug, measure_clients  # noqa: E402  (benchmarks/gpu/runtime.py)

ROOT = Path(__file__).resolve().parents[2]
BINARY = "application/x-jrm-arrays"
CLIENTS = (1, 8, 64)


def make_requests(n: int, source_size: int, instructions: list[str], seed: int = 0):
    """(source, instruction, edited) at source_size: smooth gradients plus noise, which PNG compresses about as
    well as a sampler's output (pure noise would make the PNG path look worse than it is)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, source_size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None] * 0.25) * np.ones(3, np.float32)

    def image():
        return np.clip(base + rng.normal(0, 12, base.shape) + rng.integers(0, 40, 3), 0, 255).astype(np.uint8)

    return [(image(), instructions[i % len(instructions)], image()) for i in range(n)]


def _png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def encode_bodies(requests, image_size: int):
    """Per request: the in-process arrays (engine size) and the binary and JSON bodies, as RewardClient builds
    them (binary: resized on the client with the Scorer's own load_image; JSON: base64 PNG at full size)."""
    from jrm_engine.client import encode_binary
    from jrm_engine.vision import load_image
    out = []
    for source, text, edited in requests:
        s, e = load_image(source, image_size), load_image(edited, image_size)
        header = {"instructions": [text], "sources": [1, *s.shape], "edited": [1, *e.shape]}
        binary = encode_binary(header, [s[None], e[None]])
        body = json.dumps({"items": [{"source": _png_b64(source), "instruction": text, "edited": _png_b64(edited)}]})
        out.append({"arrays": (s, text, e), "binary": binary, "json": body.encode()})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(package, *args: str, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """`python -m jrm_engine.serve PACKAGE ARGS` on a free loopback port, returned once /readyz is 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads a pipe while the benchmark runs
    proc = subprocess.Popen([sys.executable, "-m", "jrm_engine.serve", str(package), "--port", str(port), *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            log.seek(0)
            raise RuntimeError(f"jrm serve did not become ready: {log.read()[-3000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


class HttpCaller:
    """`call(body)` posts one body and checks the answer; a pool of kept-alive connections, one per client thread
    (taken and given back per call, so connections outlive measure_clients' threads and a warm-up round opens
    them)."""

    def __init__(self, url: str, fmt: str, connections: int = max(CLIENTS)):
        self.kind = BINARY if fmt == "binary" else "application/json"
        self.pool: queue.Queue = queue.Queue()
        self.clients = [httpx.Client(base_url=url, timeout=300) for _ in range(connections)]
        for c in self.clients:
            self.pool.put(c)

    def __call__(self, body: bytes) -> list[float]:
        client = self.pool.get()
        try:
            r = client.post("/v1/score", content=body, headers={"Content-Type": self.kind})
        finally:
            self.pool.put(client)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return r.json()["rewards"]

    def close(self) -> None:
        for c in self.clients:
            c.close()


def decode_per_image(bodies, max_pixels: int, repeats: int = 3) -> dict:
    """The server's JSON decode (base64 + PNG decode, with the pixel check) per image, best of `repeats`."""
    from jrm_engine.serve import ServeSettings
    from jrm_engine.serve.payload import decode_score
    settings = ServeSettings(max_pixels=max_pixels)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in bodies:
            decode_score(b["json"], "application/json", settings)
        best = min(best, time.perf_counter() - t0)
    images = 2 * len(bodies)
    png_bytes = sum(len(b["json"]) for b in bodies) * 3 / 4 / images  # base64 is 4/3 of the PNG
    return {"decode_ms_per_image": round(best / images * 1e3, 3), "png_kib_per_image": round(png_bytes / 1024, 1),
            "images": images}


def measure_all(package, source_size: int, instructions, *, scorer_options: dict, n_requests: int = 64,
                per_client: dict[int, int] | None = None, server_args: tuple[str, ...] = ()) -> dict:
    """Every figure of the module docstring for one engine. The in-process runtime is measured first and closed
    before the server starts, never both at once: on 2 cores, the bench process's idle OpenMP team spinning beside
    the server's turned its 5 ms requests into 570 ms ones, a cost no deployment has."""
    from jrm_engine.scoring import Scorer
    # The measuring process's own heap (in CI: the package compiled a moment ago) is moved out of the collector's
    # reach: a full collection of it stalls whichever request is in flight and would be charged to the server.
    gc.collect()
    gc.freeze()
    per_client = per_client or {c: max(1, 2 * n_requests // c) for c in CLIENTS}
    results: dict = {}
    with Scorer.load(package, backend="runtime", **scorer_options) as scorer:
        image_size = int(scorer.image_size)
        bodies = encode_bodies(make_requests(n_requests, source_size, instructions), image_size)
        call = lambda a: scorer.submit(*a).result()  # noqa: E731
        work = [b["arrays"] for b in bodies]
        for clients in CLIENTS:
            measure_clients(call, work, clients, per_client[clients])  # warm-up (threads, allocations)
            results[f"inprocess_{clients}_clients"] = measure_clients(call, work, clients, per_client[clients])
    results["decode_per_image"] = decode_per_image(bodies, max_pixels=source_size * source_size)
    proc, url = start_server(package, *server_args)
    try:
        for fmt in ("binary", "json"):
            http = HttpCaller(url, fmt)
            try:
                work = [b[fmt] for b in bodies]
                for clients in CLIENTS:
                    measure_clients(http, work, clients, per_client[clients])  # warm-up (connections)
                    row = measure_clients(http, work, clients, per_client[clients])
                    base = results[f"inprocess_{clients}_clients"]["candidates_per_s"]
                    row["throughput_vs_inprocess"] = round(row["candidates_per_s"] / base, 3)
                    results[f"http-{fmt}_{clients}_clients"] = row
            finally:
                http.close()
    finally:
        stop_server(proc)
    # The server's own added latency per request: one client's p50 over HTTP minus in-process, same requests.
    local = results["inprocess_1_clients"]["p50_ms"]
    results["added_p50_ms"] = {fmt: round(results[f"http-{fmt}_1_clients"]["p50_ms"] - local, 3)
                               for fmt in ("binary", "json")}
    results["image_size"] = image_size
    return results


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", required=True, help="runtime package (.pt2 from jrm-export --aoti)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--source-size", type=int, default=448)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    options = {"max_delay_ms": args.max_delay_ms, "max_queue": 4096, "device": args.device}
    server_args = ["--device", args.device, "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096"]
    if args.max_batch:
        options["max_batch"] = args.max_batch
        server_args += ["--max-batch", str(args.max_batch)]
    instructions = ["make the sky red", "remove the person on the left", "add a hat to the dog", "make it winter"]
    results = measure_all(args.package, args.source_size, instructions, scorer_options=options,
                          n_requests=args.requests, server_args=tuple(server_args))
    image_size = results["image_size"]
    report = {"benchmark": "serve", "device": args.device, "gpu": gpu_slug(args.device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "python": platform.python_version(), "package": str(args.package),
              "image_size": image_size, "source_size": args.source_size, "max_delay_ms": args.max_delay_ms,
              "results": results}
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / f"{gpu_slug(args.device)}-serve.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    for name, row in results.items():
        print(name, json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
