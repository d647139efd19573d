"""Python scoring API: rewards for (source image, instruction, edited image) triples, on any engine.

    scorer = Scorer.load("runs/x/final")                          # a checkpoint, eager scoring graph
    scorer = Scorer.load("out/scorer.pt2", backend="compiled")    # an AOTInductor package from `jrm-export --aoti`
    scorer = Scorer.load("out/scorer.onnx", backend="onnx")       # onnxruntime
    scorer = Scorer.load("out/scorer.plan", backend="tensorrt")   # TensorRT (plan checked before loading)
    rewards = scorer.score(sources, instructions, edited)         # np.ndarray [B]
    rewards = scorer.score_group(source, instruction, edits)      # np.ndarray [G]; source encoded once

    # The C++ batching runtime over the same package: requests from every thread share batches.
    with Scorer.load("out/scorer.pt2", backend="runtime", max_batch=32, max_delay_ms=2, max_queue=1024) as scorer:
        future = scorer.submit(source, instruction, edited)       # concurrent.futures.Future -> float
        rewards = scorer.score(sources, instructions, edited)     # rows become requests, batched by the runtime
    # leaving the block answers every queued request, then stops the runtime's threads (a no-op elsewhere)

Images may be paths, encoded bytes, PIL images or numpy arrays; each goes through the same `load_image` the
trainer uses (`jrm_engine.images.to_rgb`, then bicubic resize), so a differently sized image is resized, not
rejected, and these conversions are documented, not errors: grayscale -> RGB; alpha (RGBA, LA, transparent
palette, [H, W, 4]) composited over white; palette -> its colours; 16-bit (I;16 PNG, uint16 arrays) -> 8 bits
(v * 255 / 65535); float arrays in [0, 1] scaled by 255, in [0, 255] kept; bool arrays -> 0 / 255.
Bad input raises, naming the argument and the item index (`edited[3]: ...`): ValueError for an unreadable,
missing or empty (0-pixel) image, one of more than `max_image_pixels` pixels (default 64 Mpixel, checked from the
file header before decoding; `Scorer.load(..., max_image_pixels=N)`), NaN/inf or out-of-range values, a shape
that is not an image, an empty or too long instruction (more tokens than the largest text bucket), lists of
different lengths or an empty batch; TypeError for an input of the wrong type (an instruction that is not a str,
a single image where a list is expected, an array dtype that is not an image's).

Backends are a registry (`register_backend`): each loader returns an `Engine` (the scoring-graph signature on
torch tensors, plus what the Scorer needs to prepare inputs). Engines exported by `jrm-export` carry a manifest
and a tokenizer beside them; the checkpoint backend builds both from the checkpoint. An asynchronous engine (the
runtime) also provides `submit` and `close`; `Scorer.submit` preprocesses in the calling thread (resize,
tokenise) and a request whose input is bad gets a failed future naming that input, leaving every other request
alone.
"""
from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .vision import ImageLike, load_image

__all__ = ["Engine", "Scorer", "register_backend", "BACKENDS"]


@dataclass
class Engine:
    """What a backend provides. `run` has the scoring-graph contract (docs/CONTRIBUTING.md) and returns numpy arrays."""

    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray | None]]
    tokenizer: object
    image_size: int
    buckets: tuple[int, ...]
    max_batch: int
    # One group against a shared prefix (source encoded once); None: the Scorer repeats the source instead.
    run_group: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple] | None = None
    info: dict = field(default_factory=dict)
    # Asynchronous engines only: submit(source (S,S,3) uint8, edited (S,S,3) uint8, text_ids (n,) int64,
    # return_log_sigma=bool) -> Future; close() answers what is queued and stops; stats() -> counters.
    submit: Callable[..., Future] | None = None
    close: Callable[[], None] | None = None
    stats: Callable[[], dict] | None = None
    # Asynchronous engines with a group package: submit_group(source (S,S,3), edited (G,S,S,3), text_ids (n,),
    # return_log_sigma=bool) -> one Future per candidate, any G (chunked to the package's max_group).
    submit_group: Callable[..., list[Future]] | None = None


BACKENDS: dict[str, Callable[..., Engine]] = {}


def register_backend(name: str, loader: Callable[..., Engine]) -> None:
    """`loader(path, device=..., **options) -> Engine`; later registrations replace earlier ones."""
    BACKENDS[name] = loader


def _as_numpy(out) -> tuple[np.ndarray, np.ndarray | None]:
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    outs = [o.detach().float().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, np.float32)
            for o in outs]
    return outs[0], (outs[1] if len(outs) > 1 else None)


def _manifest(engine_path: Path) -> dict:
    from jrm_engine.export.manifest import manifest_path

    path = manifest_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(f"{engine_path}: no manifest {path.name} beside it; write engines with jrm-export")
    return json.loads(path.read_text())


def _engine_tokenizer(engine_path: Path, manifest: dict):
    from transformers import AutoTokenizer

    folder = engine_path.parent / manifest.get("tokenizer", engine_path.stem + ".tokenizer")
    if not folder.is_dir():
        raise FileNotFoundError(f"{engine_path}: no tokenizer folder {folder.name} beside it")
    return AutoTokenizer.from_pretrained(folder)


def _exported_engine(path: Path, manifest: dict, run, **extra) -> Engine:
    settings = manifest["settings"]
    return Engine(run=run, tokenizer=_engine_tokenizer(path, manifest), image_size=manifest["image_size"],
                  buckets=tuple(settings["buckets"]), max_batch=manifest["max_batch"], info=manifest, **extra)


# ---- backends -------------------------------------------------------------------------------------------------
def load_torch(path, device: str | None = None, positions: str | None = None, dtype: str = "float32",
               max_batch: int = 32) -> Engine:
    """A checkpoint folder, scored by the eager scoring graph (group scoring reuses the prefix's KV cache)."""
    from jrm_engine.export import DEFAULT_POSITIONS, GroupScorer
    from jrm_engine.export.load import graph_from_model, load_reward_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_reward_model(path)
    graph = graph_from_model(model, positions=positions or DEFAULT_POSITIONS, dtype=dtype, device=device)
    group = GroupScorer(graph)
    longest = model.config.model.max_length
    buckets = tuple(b for b in (16, 32, 64, 128, 256, 512, 1024, 2048) if b < longest) + (longest,)

    @torch.no_grad()
    def run(*inputs):
        return _as_numpy(graph(*(t.to(device) for t in inputs)))

    @torch.no_grad()
    def run_group(source, text_ids, text_lengths, edited):
        return _as_numpy(group(source.to(device), text_ids.to(device), text_lengths.to(device), edited.to(device)))

    return Engine(run=run, run_group=run_group, tokenizer=model.tokenizer, image_size=model.spec.image_size,
                  buckets=buckets, max_batch=max_batch, info={"checkpoint": str(path)})


def load_compiled(path, device: str | None = None) -> Engine:
    """An AOTInductor package from `jrm-export --aoti` (the manifest beside it says cpu or cuda), with its group
    package where the manifest names one."""
    from jrm_engine.export.aoti import load_package

    path = Path(path)
    manifest = _manifest(path)
    device = device or manifest["device"]
    package = load_package(path, device)

    def run(*inputs):
        return _as_numpy(package(*(t.to(device) for t in inputs)))

    run_group = None
    if manifest.get("group"):
        group = load_package(path.parent / manifest["group"]["package"], device)
        most = manifest["group"]["max_group"]

        def run_group(source, text_ids, text_lengths, edited):
            head = tuple(t.to(device) for t in (source, text_ids, text_lengths))
            outs = [_as_numpy(group(*head, edited[i:i + most].to(device))) for i in range(0, len(edited), most)]
            sigmas = [s for _, s in outs]
            return (np.concatenate([r for r, _ in outs]),
                    None if sigmas[0] is None else np.concatenate(sigmas))

    return _exported_engine(path, manifest, run, run_group=run_group)


def load_onnx(path, device: str | None = None) -> Engine:
    from jrm_engine.export.onnx_export import onnx_session, run_onnx

    path = Path(path)
    manifest = _manifest(path)
    session = onnx_session(path)
    return _exported_engine(path, manifest, lambda *inputs: _as_numpy(run_onnx(session, inputs)))


def load_tensorrt(path, device: str | None = None) -> Engine:
    from jrm_engine.export.tensorrt_build import load_engine

    path = Path(path)
    engine = load_engine(path)  # checks the sidecar before deserialising
    return _exported_engine(path, engine.meta, lambda *inputs: _as_numpy(engine(*inputs)))


def load_runtime(path, device: str | None = None, max_batch: int | None = None, max_delay_ms: float = 2.0,
                 max_queue: int = 1024, **runtime_options) -> Engine:
    """An engine from `jrm-export` (AOTInductor .pt2, or a TensorRT plan where the extension was built with
    TensorRT) served by the C++ batching runtime (`jrm_engine.runtime.RuntimeScorer`; `runtime_options` go to
    it: inflight, intra_op_threads, expect, verify_sha256). `max_batch` defaults to the engine's."""
    from jrm_engine.export.manifest import manifest_path
    from jrm_engine.runtime import RuntimeScorer

    path = Path(path)
    manifest = _manifest(path)
    tokenizer = _engine_tokenizer(path, manifest)  # before starting threads: a missing tokenizer fails cleanly
    runtime = RuntimeScorer.load(manifest_path(path), device=device, max_batch=max_batch, max_delay_ms=max_delay_ms,
                                 max_queue=max_queue, **runtime_options)
    settings = manifest["settings"]
    run_group = submit_group = None
    if runtime.manifest.group is not None:  # through the runtime's group engine: the source encoded once

        def submit_group(source, edited, text_ids, return_log_sigma=False):
            step = runtime.manifest.max_group
            return [f for i in range(0, len(edited), step)
                    for f in runtime.submit_group(source, edited[i:i + step], text_ids,
                                                  return_log_sigma=return_log_sigma)]

        def run_group(source, text_ids, text_lengths, edited):
            ids = text_ids[0, : int(text_lengths[0])].numpy()
            if runtime.has_log_sigma:
                return runtime.score_group(source[0].numpy(), list(edited.numpy()), ids, return_log_sigma=True)
            return runtime.score_group(source[0].numpy(), list(edited.numpy()), ids), None

    return Engine(run=runtime.run_batch, run_group=run_group, tokenizer=tokenizer, image_size=manifest["image_size"],
                  buckets=tuple(settings["buckets"]), max_batch=runtime.max_batch, info=manifest,
                  submit=runtime.submit, close=runtime.close, stats=runtime.stats, submit_group=submit_group)


register_backend("torch", load_torch)
register_backend("compiled", load_compiled)
register_backend("onnx", load_onnx)
register_backend("tensorrt", load_tensorrt)
register_backend("runtime", load_runtime)


# ---- the scorer -----------------------------------------------------------------------------------------------
class Scorer:
    def __init__(self, engine: Engine, max_image_pixels: int | None = None):
        self.engine = engine
        self.max_image_pixels = max_image_pixels  # None: jrm_engine.images.DEFAULT_MAX_PIXELS

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", max_image_pixels: int | None = None,
             **options) -> "Scorer":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(sorted(BACKENDS))}")
        return cls(BACKENDS[backend](path, **options), max_image_pixels=max_image_pixels)

    @property
    def image_size(self) -> int:
        return self.engine.image_size

    def close(self) -> None:
        """Answer every queued request, then stop the engine's threads (runtime backend; others: nothing to do)."""
        if self.engine.close is not None:
            self.engine.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _image(self, image: ImageLike, name: str) -> np.ndarray:
        return load_image(image, self.image_size, name=name, max_pixels=self.max_image_pixels)

    def _pixels(self, images: Sequence[ImageLike], what: str, offset: int = 0) -> torch.Tensor:
        """`offset`: the index of images[0] in the caller's list, so errors name the caller's index."""
        arrays = [self._image(im, f"{what}[{offset + i}]") for i, im in enumerate(images)]
        return torch.from_numpy(np.stack(arrays))  # [B, S, S, 3] uint8

    @staticmethod
    def _items(values, what: str) -> list:
        """A list argument as a list; a lone image or string (which would iterate as pixels rows or characters)
        is refused."""
        if isinstance(values, (str, bytes, bytearray, Path, Image.Image)) or (
                isinstance(values, np.ndarray) and values.ndim != 4):
            raise TypeError(f"{what}: expected a list, got a single {type(values).__name__}"
                            + (f" of shape {values.shape}" if isinstance(values, np.ndarray) else ""))
        try:
            return list(values)
        except TypeError:
            raise TypeError(f"{what}: expected a list, got {type(values).__name__}") from None

    def _token_ids(self, text: str, what: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"{what}: expected a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{what}: empty instruction")
        row = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(row) > self.engine.buckets[-1]:
            raise ValueError(f"{what}: {len(row)} tokens exceeds the largest text bucket "
                             f"({self.engine.buckets[-1]}); re-export with a larger --buckets or shorten it")
        return row

    def _text(self, instructions: Sequence[str], offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self._padded([self._token_ids(text, f"instructions[{offset + i}]")
                             for i, text in enumerate(instructions)])

    def _padded(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        bucket = next(b for b in self.engine.buckets if b >= max(map(len, ids)))
        text_ids = torch.zeros(len(ids), bucket, dtype=torch.long)  # contract: right-padded with 0
        for i, row in enumerate(ids):
            text_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return text_ids, torch.tensor([len(r) for r in ids], dtype=torch.long)

    def submit(self, source: ImageLike, instruction: str, edited: ImageLike, *, return_log_sigma: bool = False
               ) -> Future:
        """One request, batched with every other thread's (runtime backend); a Future of the reward (or of
        `(reward, log_sigma)`). Bad input fails only this future, with a ValueError or TypeError naming the input;
        a full queue raises `jrm_engine.runtime.QueueFullError` here, a closed scorer `RuntimeClosedError`."""
        if self.engine.submit is None:
            raise NotImplementedError("submit() needs an asynchronous backend (backend='runtime'); this engine "
                                      "scores synchronously: use score()")
        try:
            source_pixels = self._image(source, "source")
            edited_pixels = self._image(edited, "edited")
            text_ids = np.asarray(self._token_ids(instruction, "instruction"), dtype=np.int64)
        except (ValueError, TypeError) as e:
            failed: Future = Future()
            failed.set_exception(e)
            return failed
        return self.engine.submit(source_pixels, edited_pixels, text_ids, return_log_sigma=return_log_sigma)

    def submit_group(self, source: ImageLike, instruction: str, edited: Sequence[ImageLike], *,
                     return_log_sigma: bool = False) -> list[Future]:
        """G edits of one source and instruction, batched with every other thread's requests (runtime backend):
        one Future per candidate, in order. With a group package the source is encoded once per chunk of up to
        max_group candidates; without one each candidate is its own request. Bad input fails every future of the
        group with a ValueError naming the input; a full queue raises `QueueFullError` here."""
        if self.engine.submit is None:
            raise NotImplementedError("submit_group() needs an asynchronous backend (backend='runtime'); this "
                                      "engine scores synchronously: use score_group()")
        if not len(edited):
            raise ValueError("edited: empty list of candidates")
        try:
            source_pixels = self._image(source, "source")
            pixels = np.stack([self._image(im, f"edited[{i}]") for i, im in enumerate(edited)])
            text_ids = np.asarray(self._token_ids(instruction, "instruction"), dtype=np.int64)
        except (ValueError, TypeError) as e:
            failed = [Future() for _ in edited]
            for future in failed:
                future.set_exception(e)
            return failed
        if self.engine.submit_group is None:
            return [self.engine.submit(source_pixels, p, text_ids, return_log_sigma=return_log_sigma) for p in pixels]
        return self.engine.submit_group(source_pixels, pixels, text_ids, return_log_sigma=return_log_sigma)

    def score(self, sources: Sequence[ImageLike], instructions: Sequence[str], edited: Sequence[ImageLike], *,
              return_log_sigma: bool = False):
        """Rewards [B] (with `return_log_sigma`, also log sigma [B] for uncertainty heads)."""
        sources, instructions, edited = (self._items(v, what) for v, what in
                                         ((sources, "sources"), (instructions, "instructions"), (edited, "edited")))
        if not len(sources) == len(instructions) == len(edited):
            raise ValueError(f"sources, instructions and edited must have the same length, got {len(sources)}, "
                             f"{len(instructions)}, {len(edited)}")
        if not sources:
            raise ValueError("sources: empty batch, nothing to score")
        rewards, sigmas = [], []
        step = self.engine.max_batch
        for start in range(0, len(sources), step):
            end = start + step
            text_ids, lengths = self._text(instructions[start:end], offset=start)
            r, s = self.engine.run(self._pixels(sources[start:end], "sources", start),
                                   self._pixels(edited[start:end], "edited", start), text_ids, lengths)
            rewards.append(r)
            sigmas.append(s)
        return self._result(rewards, sigmas, return_log_sigma)

    def score_group(self, source: ImageLike, instruction: str, edited: Sequence[ImageLike], *,
                    return_log_sigma: bool = False):
        """Rewards [G] for G edits of one source and instruction; the source is encoded once where the backend
        supports it (torch; compiled and runtime with the group package `jrm-export --aoti` writes), else
        repeated per candidate."""
        edited = self._items(edited, "edited")
        if not edited:
            raise ValueError("edited: empty list of candidates")
        source_pixels = torch.from_numpy(np.stack([self._image(source, "source")]))  # [1, S, S, 3]
        text_ids, lengths = self._padded([self._token_ids(instruction, "instruction")])
        rewards, sigmas = [], []
        step = self.engine.max_batch
        for start in range(0, len(edited), step):
            pixels = self._pixels(edited[start:start + step], "edited", start)
            g = pixels.shape[0]
            if self.engine.run_group is not None:
                r, s = self.engine.run_group(source_pixels, text_ids, lengths, pixels)
            else:
                r, s = self.engine.run(source_pixels.expand(g, -1, -1, -1).contiguous(), pixels,
                                       text_ids.expand(g, -1).contiguous(), lengths.expand(g).contiguous())
            rewards.append(r)
            sigmas.append(s)
        return self._result(rewards, sigmas, return_log_sigma)

    @staticmethod
    def _result(rewards, sigmas, return_log_sigma: bool):
        r = np.concatenate(rewards).astype(np.float32)
        if not return_log_sigma:
            return r
        if sigmas[0] is None:
            raise ValueError("return_log_sigma: this model's reward head has one output (no sigma)")
        return r, np.concatenate(sigmas).astype(np.float32)
