"""In-process dynamic-batching scoring runtime over a compiled scoring graph (C++ extension `jrm_engine._runtime`).

Requests from any number of Python threads are validated, copied and queued by C++ with the GIL released;
worker threads close a batch when it holds `max_batch` requests or `max_delay_ms` after its first request, pad
it to its text-length bucket, run it on the engine (AOTInductor package, or TensorRT plan where built) and
answer each request's `concurrent.futures.Future`. A batch that closes before it is full also takes the oldest
waiting requests of the same image size from the other text buckets, padded to the longest, and `score` closes
the open batches as soon as its requests are queued instead of waiting `max_delay_ms`. Inputs are already
preprocessed: uint8 pixels at the engine's image size and int64 instruction token ids (tokenisation and resizing
stay in `jrm_engine.scoring`). With a group package, `score_group` encodes a source and instruction once for up to
`max_group` candidates.

    with RuntimeScorer.load("out/manifest.json", max_batch=32, max_delay_ms=2) as rt:
        fut = rt.submit(source_pixels, edited_pixels, text_ids)  # (S,S,3) uint8, (S,S,3) uint8, (n,) int64
        reward = fut.result()

The engine files and their manifest: `jrm_engine.runtime_manifest`.

Known issue (CUDA, unresolved and unverified on a GPU):
On an H100 (torch 2.11.0+cu130; extension built there with `pip install --no-build-isolation --no-deps --target
/tmp/jrm .`, imported with PYTHONPATH=/tmp/jrm), `benchmarks/gpu/runtime.py --manifest` on the 3B bf16 AOTI
package died with a segmentation fault before printing anything. The cause is not known. The benchmark then
printed only at its end, so the crash site is unknown too; the first thing it does with the package is torch's
own `aoti_load_package` and direct calls (no code of ours), and that package had never been loaded or run
anywhere before (the scoring benchmark only compiled it). The CPU path is tested here.
A static review of the CUDA path found no definite bug. Reviewed and left as they were: device index -1 (the
loader then uses the current device), streams from torch's pool under a device-generic StreamGuard (nothing from
c10_cuda or `at::cuda`, so the file also compiles against CPU-only torch headers), pinned staging through
`at::empty(pinned_memory)`. Pinned staging needs the CUDA hooks that `import torch` loads, and this module
imports torch first. The loader is built on the caller's thread and run from the workers, which is fine because
the primary CUDA context is shared by the whole process.
Changed as hardening (none of it has run on a GPU):
  1. "cuda" is resolved to a concrete index once, and construction runs under a DeviceGuard, so the loader's
     constants, device buffers, pinned staging and streams all belong to the runtime's device.
  2. The engine's output tensors stay alive until the stream has finished copying them to the host. Before,
     they were released while that asynchronous copy was still queued, which was safe only because of the
     caching allocator's stream ordering.
  3. The extension records the torch it was compiled against, and importing it under another torch
     major.minor fails with an error that names both versions. Otherwise a stale build (for example one found
     through the site-packages fallback when a checkout shadows the install) would load and might crash later.
  4. The benchmark prints a line as each stage starts, enables faulthandler, and runs the direct calls and the
     runtime in separate processes, so the next run says where it dies and a crash in one part keeps the other's
     figures. `benchmarks/gpu/runtime_session.sh` runs a tiny bf16 package on CUDA before the 3B one, to tell a
     broken CUDA path from a problem of the large package. (The session after the crash was lent no GPU.)
  5. A second review against torch's loader sources found one documented crash: torch's loader parses package
     metadata into a shared static, so two loaders built at once can corrupt the heap (pytorch PR #194128).
     A Runtime is now built with the GIL held, like torch's own binding, and under a process-wide lock. The
     crashed run built its loaders one after the other, so this does not explain that crash.
  6. A batch whose engine call throws now synchronizes the worker's stream before the slot is reused.
Untested suspicion: on a CUDA torch, CMake's `torch` target links the CUDA toolkit's libcudart. If the toolkit
and the torch wheel differ in CUDA major version, the process gets a second CUDA runtime; this code never calls
it directly.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import threading
import weakref
import zipfile
from concurrent.futures import Future, InvalidStateError, wait, FIRST_COMPLETED
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch  # before _runtime: loads the libtorch it links, even where its build-time RPATH is stale

from .runtime_manifest import CONTRACT_INPUTS, Bucket, Manifest  # noqa: F401  (Manifest and Bucket re-exported)


def _load_extension():
    """The compiled `jrm_engine._runtime`, checked against the running torch."""
    try:
        from . import _runtime as ext
    except ImportError as e:
        raise ImportError("jrm_engine._runtime (the C++ runtime) is not built: run "
                          "`pip install --no-build-isolation --no-deps .` in the checkout (it compiles against the "
                          "installed torch)") from e
    built, running = ext.torch_version, torch.__version__.split("+")[0]
    if built.split(".")[:2] != running.split(".")[:2]:
        raise ImportError(f"{ext.__file__} was compiled against torch {built} but this process runs torch "
                          f"{torch.__version__}; libtorch's C++ ABI differs between releases, so rebuild it here: "
                          f"`pip install --no-build-isolation --no-deps .` (or `--target DIR` and put DIR first on "
                          f"PYTHONPATH)")
    return ext


_runtime = _load_extension()

QueueFullError = _runtime.QueueFullError
RuntimeClosedError = _runtime.RuntimeClosedError


class BatchError(RuntimeError):
    """The engine failed on the batch this request was in (the message says which batch and why)."""


class RuntimeScorer:
    """Batched scoring of preprocessed requests; thread-safe; a context manager that drains on exit.

    Futures resolve to a float reward (or `(reward, log_sigma)` with `return_log_sigma=True`). A request with
    bad input gets a failed future (ValueError naming the argument); a full queue raises `QueueFullError` at
    submit (never a silent drop); an engine failure fails only that batch's futures (`BatchError`). Futures are
    running from the moment they are returned (the request is queued in C++), so `cancel()` returns False.
    """

    def __init__(self, manifest: Manifest, *, device: str | None = None, max_batch: int | None = None,
                 max_delay_ms: float = 2.0, max_queue: int = 1024, inflight: int | None = None,
                 intra_op_threads: int = 0, expect: dict[str, Any] | None = None, verify_sha256: bool = True):
        device = device or manifest.device
        check_engine_matches(manifest, device, expect or {}, verify_sha256)
        max_batch = max_batch or manifest.max_batch
        if not 1 <= max_batch <= manifest.max_batch:
            raise ValueError(f"max_batch={max_batch} must be in [1, {manifest.max_batch}] (the engines' batch limit)")
        config = _runtime.RuntimeConfig()
        config.backend = manifest.backend
        config.device = device
        config.buckets = [_runtime.BucketSpec(b.image_size, b.text_len, str(b.package)) for b in manifest.buckets]
        config.input_names = CONTRACT_INPUTS
        config.output_names = manifest.outputs
        config.vocab_size = manifest.vocab_size
        config.max_batch = max_batch
        config.max_delay_us = int(round(max_delay_ms * 1000))
        config.max_queue = max_queue
        # Two batches in flight on a GPU overlap one batch's copies with the other's compute; on a CPU the
        # engine already uses every core for one batch.
        config.inflight = inflight or (2 if device.startswith("cuda") else 1)
        # CPU only: OpenMP threads per worker (0 = torch's count). On a shared or busy host, inflight=cores with
        # intra_op_threads=1 avoids waking an OpenMP team for every small batch.
        config.intra_op_threads = intra_op_threads
        if manifest.group is not None:
            config.group_package = str(manifest.group.package)
            config.max_group = manifest.max_group
            config.group_image_size = manifest.group.image_size
        self.manifest = manifest
        self.max_batch, self.max_queue = max_batch, max_queue
        self.has_log_sigma = len(manifest.outputs) > 1
        self._rt = _runtime.Runtime(config)
        self._ids = itertools.count()
        self._pending: dict[int, tuple[Future, bool]] = {}
        self._lock = threading.Lock()
        # The completion thread must not hold `self`, so an unclosed scorer can still be collected and closed.
        self._thread = threading.Thread(target=_resolve_completions, args=(self._rt, self._pending, self._lock),
                                        name="jrm-runtime-completions", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._rt, self._thread, True, self._pending, self._lock)

    @classmethod
    def load(cls, manifest_path: str | Path, **kwargs: Any) -> "RuntimeScorer":
        return cls(Manifest.load(manifest_path), **kwargs)

    def submit(self, source_pixels, edited_pixels, text_ids, *, return_log_sigma: bool = False) -> Future:
        """Queue one request: (S, S, 3) uint8 source and edited pixels, (n,) instruction token ids."""
        if return_log_sigma and not self.has_log_sigma:
            raise ValueError("return_log_sigma=True but this engine's reward head has no log_sigma output")
        future: Future = Future()
        future.set_running_or_notify_cancel()
        request_id = next(self._ids)
        with self._lock:
            self._pending[request_id] = (future, return_log_sigma)
        try:
            self._rt.submit(request_id, _pixels(source_pixels), _pixels(edited_pixels), _token_ids(text_ids))
        except ValueError as e:  # bad input: this request's future fails, nothing else is affected
            with self._lock:
                self._pending.pop(request_id, None)
            future.set_exception(e)
        except BaseException:  # queue full or closed: the caller must hear it now
            with self._lock:
                self._pending.pop(request_id, None)
            raise
        return future

    def score(self, sources: Sequence, edited: Sequence, text_ids: Sequence, *,
              return_log_sigma: bool = False):
        """Score many requests (batched with every other thread's); returns rewards (N,) float32, or
        (rewards, log_sigma). Waits for queue room when its own earlier requests hold the queue full.

        Once all are queued it flushes: the open batches close now rather than `max_delay_ms` after their first
        request, since this caller has nothing more to add and waits for them."""
        if not len(sources) == len(edited) == len(text_ids):
            raise ValueError(f"sources, edited and text_ids differ in length: "
                             f"{len(sources)}, {len(edited)}, {len(text_ids)}")
        return self._score_all([lambda a=args: [self.submit(*a, return_log_sigma=return_log_sigma)]
                                for args in zip(sources, edited, text_ids)], return_log_sigma)

    def _score_all(self, submits: list, return_log_sigma: bool):
        """Run each `submit() -> [Future]`, waiting for queue room while this caller's own requests fill the queue;
        then flush and collect every result."""
        futures: list[Future] = []
        for submit in submits:
            retried = False
            while True:
                try:
                    futures.extend(submit())
                    break
                except QueueFullError:
                    waiting = [f for f in futures if not f.done()]
                    if not waiting:
                        # Its own requests may have run between the refusal and this check, leaving room: retry
                        # once. Refused again with none of its own waiting, the queue is full of other callers'.
                        if retried:
                            raise
                        retried = True
                        continue
                    retried = False
                    self.flush()  # its own queued requests are all it waits for
                    wait(waiting, return_when=FIRST_COMPLETED)
        self.flush()
        return _collect(futures, return_log_sigma)

    def submit_group(self, source_pixels, edited_pixels, text_ids, *, return_log_sigma: bool = False) -> list[Future]:
        """Queue G candidate edits (G, S, S, 3) of one source and instruction as one request for the group engine
        (the source and instruction are encoded once); one Future per candidate. G <= max_group."""
        if self.manifest.group is None:
            raise ValueError(f"runtime manifest {self.manifest.path}: no group package (export with "
                             f"`jrm-export --aoti` without --no-group)")
        if return_log_sigma and not self.has_log_sigma:
            raise ValueError("return_log_sigma=True but this engine's reward head has no log_sigma output")
        edited = _pixels(edited_pixels)
        if edited.ndim == 4 and len(edited) == 0:
            raise ValueError("edited_pixels: no candidates (shape (0, S, S, 3))")
        futures = [Future() for _ in range(len(edited) if edited.ndim == 4 else 1)]
        ids = [next(self._ids) for _ in futures]
        with self._lock:
            for request_id, future in zip(ids, futures):
                future.set_running_or_notify_cancel()
                self._pending[request_id] = (future, return_log_sigma)
        try:
            self._rt.submit_group(ids, _pixels(source_pixels), edited, _token_ids(text_ids))
        except BaseException as e:
            with self._lock:
                for request_id in ids:
                    self._pending.pop(request_id, None)
            if not isinstance(e, ValueError):  # queue full or closed: the caller must hear it now
                raise
            for future in futures:  # bad input: these futures fail, nothing else is affected
                future.set_exception(e)
        return futures

    def score_group(self, source, edited_list: Sequence, text_ids, *, return_log_sigma: bool = False):
        """Score G candidates for one source image and instruction; returns (G,) float32 (or with log_sigma).

        With a group engine, each chunk of up to max_group candidates is one request that encodes the source and
        instruction once; without one, every candidate is an independent request (the source repeated)."""
        n = len(edited_list)
        if n == 0:
            raise ValueError("edited_list: empty list of candidates")
        if self.manifest.group is None:
            return self.score([source] * n, edited_list, [text_ids] * n, return_log_sigma=return_log_sigma)
        edited = np.stack([_pixels(e) for e in edited_list])
        step = self.manifest.max_group
        return self._score_all([lambda i=i: self.submit_group(source, edited[i:i + step], text_ids,
                                                              return_log_sigma=return_log_sigma)
                                for i in range(0, n, step)], return_log_sigma)

    def flush(self) -> None:
        """Close the open batches now: for a caller that has submitted everything it is about to wait for."""
        self._rt.flush()

    def run_batch(self, source_pixels, edited_pixels, text_ids, text_lengths):
        """The scoring-graph contract (padded batch arrays or CPU tensors) -> (rewards [B], log_sigma [B] or None).

        Each row becomes its own request (padding stripped), so rows from concurrent callers share batches; this
        is the `run` a `jrm_engine.scoring` backend can wrap."""
        source, edited, ids, lengths = (np.asarray(t.cpu() if hasattr(t, "cpu") else t)
                                        for t in (source_pixels, edited_pixels, text_ids, text_lengths))
        if not len(source) == len(edited) == len(ids) == len(lengths):
            raise ValueError(f"batch sizes differ: source_pixels {len(source)}, edited_pixels {len(edited)}, "
                             f"text_ids {len(ids)}, text_lengths {len(lengths)}")
        rows = [ids[i, : int(n)] for i, n in enumerate(lengths)]
        if self.has_log_sigma:
            return self.score(source, edited, rows, return_log_sigma=True)
        return self.score(source, edited, rows), None

    def stats(self) -> dict[str, Any]:
        """Counters: requests, completed, failed, rejected, invalid, batches (and why each closed: full, delay,
        flush, drain), padded_up (requests run in a longer text bucket than their own), mean batch size, queue
        size (now and the most seen), queue-wait and run-time percentiles in microseconds."""
        return self._rt.stats()

    def close(self, drain: bool = True) -> None:
        """Stop accepting requests; with drain answer every queued request first, else fail them. Idempotent."""
        self._finalizer.detach()
        _shutdown(self._rt, self._thread, drain, self._pending, self._lock)

    def __enter__(self) -> "RuntimeScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close(drain=True)


def _collect(futures: list[Future], return_log_sigma: bool):
    """Wait for every future: rewards (N,) float32, or (rewards, log_sigma)."""
    results = [f.result() for f in futures]
    if return_log_sigma:
        pairs = np.asarray(results, dtype=np.float32).reshape(len(results), 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()
    return np.asarray(results, dtype=np.float32)


def _pixels(x) -> np.ndarray:
    # No dtype conversion: a float image here is a preprocessing bug the C++ check should report.
    return np.ascontiguousarray(np.asarray(x))


def _token_ids(x) -> np.ndarray:
    ids = np.asarray(x)
    if ids.size == 0 or ids.dtype.kind in "iu":
        ids = ids.astype(np.int64, copy=False)  # int32 ids are lossless; [] would otherwise be float64
    return np.ascontiguousarray(ids)


def _resolve_completions(rt, pending: dict, lock: threading.Lock) -> None:
    # One Python thread resolves every future: the C++ workers never take the GIL, and a Python callback run
    # from a C++ thread cannot deadlock interpreter shutdown. wait_completions releases the GIL while waiting
    # and returns everything finished so far, so a full batch costs one wake-up.
    while (done := rt.wait_completions(100)) is not None:
        for request_id, reward, log_sigma, error in done:
            with lock:
                entry = pending.pop(request_id, None)
            if entry is None:
                continue
            future, want_log_sigma = entry
            try:
                if error is not None:
                    future.set_exception(BatchError(error))
                else:
                    future.set_result((reward, log_sigma) if want_log_sigma else reward)
            except InvalidStateError:  # cancelled by its caller
                pass


def _shutdown(rt, thread: threading.Thread, drain: bool, pending: dict, lock: threading.Lock) -> None:
    rt.close(drain)  # joins the C++ workers, then closes the completion queue
    if thread is not threading.current_thread():
        thread.join()
    # Every request gets a completion from C++; should one ever be missed, its future still fails, never hangs.
    with lock:
        orphans = [future for future, _ in pending.values()]
        pending.clear()
    for future in orphans:
        if not future.done():
            future.set_exception(RuntimeClosedError("the runtime closed before this request was answered"))


def check_engine_matches(manifest: Manifest, device: str, expect: dict[str, Any], verify_sha256: bool) -> None:
    """Refuse engines built for another model, torch/TensorRT version or GPU, naming the field that differs."""
    where = f"runtime manifest {manifest.path}"
    for name, value in expect.items():
        if manifest.fields.get(name) != value:
            raise ValueError(f"{where}: field {name!r} is {manifest.fields.get(name)!r}, expected {value!r}")
    if device.split(":")[0] != manifest.device:
        raise ValueError(f"{where}: field 'device' is {manifest.device!r} but the runtime was asked for {device!r}")
    if manifest.backend == "aoti":
        built = manifest.fields.get("torch_version")
        if built and built.split(".")[:2] != torch.__version__.split(".")[:2]:
            raise ValueError(f"{where}: field 'torch_version' is {built!r}, this process runs torch "
                             f"{torch.__version__}; re-export the package with this torch")
    elif manifest.backend == "tensorrt":
        if not _runtime.has_tensorrt:
            raise RuntimeError("this build of jrm_engine has no TensorRT backend (CMake did not find TensorRT); "
                               "use a manifest with backend 'aoti'")
        if manifest.fields.get("tensorrt_version") != _runtime.tensorrt_version():
            raise ValueError(f"{where}: field 'tensorrt_version' is {manifest.fields.get('tensorrt_version')!r}, "
                             f"the linked TensorRT is {_runtime.tensorrt_version()}")
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        here = "{}.{}".format(*torch.cuda.get_device_capability(index))
        for bucket in manifest.buckets:
            built = manifest.fields.get("compute_capability") or _aoti_compute_capability(bucket.package)
            if built and built.replace(".", "") != here.replace(".", ""):
                raise ValueError(f"{where}: field 'compute_capability' of {bucket.package.name} is {built!r}, "
                                 f"this GPU is {here}")
    if verify_sha256:
        engines = manifest.buckets + ([manifest.group] if manifest.group else [])
        for bucket in {b.package: b for b in engines}.values():
            if bucket.sha256 and _sha256(bucket.package) != bucket.sha256:
                raise ValueError(f"{where}: field 'sha256' of {bucket.package.name} does not match the file")


def _aoti_compute_capability(package: Path) -> str | None:
    if package.suffix != ".pt2":
        return None
    with zipfile.ZipFile(package) as z:
        for name in z.namelist():
            if name.endswith("_metadata.json"):
                return json.loads(z.read(name)).get("AOTI_COMPUTE_CAPABILITY") or None
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
