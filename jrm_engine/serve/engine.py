"""ServeEngine: a loaded Scorer behind async `score` / `score_group` that never block the event loop.

On the runtime backend every candidate is handed to the C++ runtime as a future (preprocessing, i.e. resizing
and tokenising, runs in a thread pool) and awaited with `asyncio.wrap_future`, so candidates of concurrent HTTP
requests share the runtime's batches. The synchronous backends (compiled, torch) score one request at a time on
one worker thread: each already uses every core for its batch, and nothing batches across their requests.

Errors come out as `jrm_engine.serve.errors` exceptions naming the field: a bad image or instruction of item i
is a BadInput naming `items[i]...`; a full runtime queue, or a closing runtime, is Overloaded (503, retry); a
request past its deadline is TimedOut (504); an engine failure is EngineFailed (500).
"""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jrm_engine.scoring import Scorer

from .errors import BadInput, EngineFailed, Overloaded, TimedOut
from .settings import ServeSettings

Item = tuple[Any, str, Any]  # (source image, instruction, edited image): arrays or PIL images of any size


def engine_hash(path: str | Path, scorer: Scorer) -> str:
    """What `model` reports: the engine's sha256 from its manifest (exported engines), else one sha256 over the
    checkpoint folder's files, computed once here."""
    info = scorer.engine.info or {}
    hashes = sorted({b["sha256"] for b in info.get("buckets", []) if b.get("sha256")})
    if len(hashes) == 1:
        return "sha256:" + hashes[0]
    if hashes:  # several engine files (one per bucket): one hash over theirs
        import hashlib
        return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    from jrm_engine.export.manifest import checkpoint_sha256, file_sha256
    path = Path(path)
    return "sha256:" + (checkpoint_sha256(path) if path.is_dir() else file_sha256(path))


class ServeEngine:
    """A Scorer for an asyncio server. Use `ServeEngine.load(path, backend, settings, **scorer_options)`."""

    def __init__(self, scorer: Scorer, model: str, settings: ServeSettings):
        self.scorer, self.model, self.settings = scorer, model, settings
        self.asynchronous = scorer.engine.submit is not None
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="jrm-serve-decode")
        # Synchronous engines run one call at a time; a second thread would only fight it for the cores.
        self._sync = None if self.asynchronous else ThreadPoolExecutor(1, thread_name_prefix="jrm-serve-score")
        self.ready = False
        self._closed = False

    @classmethod
    def load(cls, path: str | Path, backend: str = "runtime", settings: ServeSettings | None = None,
             **scorer_options: Any) -> "ServeEngine":
        scorer = Scorer.load(path, backend=backend, **scorer_options)
        try:
            return cls(scorer, engine_hash(path, scorer), settings or ServeSettings())
        except BaseException:
            scorer.close()
            raise

    @property
    def image_size(self) -> int:
        return self.scorer.image_size

    # ---- scoring ------------------------------------------------------------------------------------------
    async def score(self, items: Sequence[Item]) -> np.ndarray:
        """Rewards (N,) float32 for N (source, instruction, edited) items."""
        if not items:
            raise BadInput("items", "empty list")
        if self.asynchronous:
            futures = await self._run(self._pool, self._submit_items, items)
            return await self._gather(futures, lambda i: f"items[{i}]")
        sources, texts, edited = zip(*items)
        return await self._sync_call("items", self.scorer.score, list(sources), list(texts), list(edited))

    async def score_group(self, source: Any, instruction: str, candidates: Sequence[Any]) -> np.ndarray:
        """Rewards (G,) float32 for G candidate edits of one source and instruction (source encoded once where the
        engine has a group package)."""
        if not len(candidates):
            raise BadInput("candidates", "empty list")
        if self.asynchronous:
            futures = await self._run(self._pool, self._submit_group, source, instruction, candidates)
            return await self._gather(futures, lambda i: "group")
        return await self._sync_call("group", self.scorer.score_group, source, instruction, list(candidates))

    def _submit_items(self, items: Sequence[Item]) -> list[Future]:
        return [f for source, text, edited in items
                for f in self._admit(lambda: [self.scorer.submit(source, text, edited)])]

    def _submit_group(self, source, instruction, candidates) -> list[Future]:
        return self._admit(lambda: self.scorer.submit_group(source, instruction, candidates))

    def _admit(self, submit) -> list[Future]:
        from jrm_engine.runtime import QueueFullError, RuntimeClosedError
        try:
            return submit()
        except QueueFullError as e:
            # Candidates of this request already queued still run and are discarded: the client retries the whole
            # request, which keeps every answer all-or-nothing.
            raise Overloaded(f"the runtime's queue is full ({e}); retry later", self.settings.retry_after_s) from e
        except RuntimeClosedError as e:
            raise Overloaded("the server is shutting down", self.settings.retry_after_s) from e

    async def _gather(self, futures: list[Future], where) -> np.ndarray:
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True),
                                             self.settings.timeout_s)
        except asyncio.TimeoutError as e:
            raise TimedOut("request", f"not answered within {self.settings.timeout_s:g} s") from e
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                raise self._request_error(r, where(i))
        return np.asarray(results, dtype=np.float32)

    async def _sync_call(self, where: str, fn, *args) -> np.ndarray:
        try:
            return await asyncio.wait_for(self._run(self._sync, fn, *args), self.settings.timeout_s)
        except asyncio.TimeoutError as e:
            raise TimedOut("request", f"not answered within {self.settings.timeout_s:g} s") from e
        except Exception as e:
            raise self._request_error(e, where) from e

    async def offload(self, fn, *args):
        """Run `fn(*args)` on the decode thread pool (request parsing, image decoding): the event loop stays free."""
        return await self._run(self._pool, fn, *args)

    async def _run(self, pool, fn, *args):
        if self._closed:
            raise Overloaded("the server is shutting down", self.settings.retry_after_s)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def _request_error(self, e: BaseException, where: str) -> Exception:
        from jrm_engine.runtime import BatchError, RuntimeClosedError
        if isinstance(e, ValueError):  # the Scorer's messages start with the input they are about
            return BadInput(where, str(e))
        if isinstance(e, RuntimeClosedError):
            return Overloaded("the server shut down before this request was answered", self.settings.retry_after_s)
        if isinstance(e, BatchError):
            return EngineFailed(where, f"the engine failed on this request's batch: {e}")
        return EngineFailed(where, f"{type(e).__name__}: {e}")

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def warmup(self) -> None:
        """Score one item and one group of two, so the first client request does not pay the engines' first-call
        cost, then mark the engine ready."""
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
        await self.score([(image, "warm up", image)])
        await self.score_group(image, "warm up", [image, image])
        self.ready = True

    def stats(self) -> dict:
        """The runtime's counters (`RuntimeScorer.stats`); {} for synchronous engines."""
        return self.scorer.engine.stats() if self.scorer.engine.stats else {}

    def close(self) -> None:
        """Answer what the runtime has queued, then stop it and the thread pools. Idempotent."""
        if self._closed:
            return
        self._closed, self.ready = True, False
        self._pool.shutdown(wait=True)
        if self._sync is not None:
            self._sync.shutdown(wait=True)
        self.scorer.close()

