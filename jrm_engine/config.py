"""Configuration: one dataclass per concern, named presets, YAML/TOML files and command-line overrides.

The resolved `JRMConfig` is saved as JSON inside every checkpoint, so a checkpoint always says how it was made.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TOKEN_LAYOUT = "source-edited-instruction"  # [source image] [edited image] instruction <reward>: jrm_engine/sequence.py


@dataclass
class TinyBackboneConfig:
    """Architecture of the random-init Qwen2.5-VL used when no `--backbone` folder is given."""

    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    # A tiny head_dim with the default theta 1e4 leaves the width axis only near-zero rotary frequencies, so the
    # model cannot tell image columns apart (see ../shared/docs/learnability-probe.md). Theta 10 fixes it.
    rope_theta: float = 10.0
    mrope_section: tuple[int, int, int] = (2, 7, 7)


@dataclass
class ModelConfig:
    backbone: str | None = None  # local folder of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint; None = tiny
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    image_size: int = 84  # every image is resized to image_size x image_size (a multiple of 28)
    reward_head: str = "mlp"  # "linear" | "mlp"
    reward_token: str = "<|reward|>"
    max_length: int = 256  # longest token sequence accepted (explanation included)
    gradient_checkpointing: bool = True  # used on CUDA only
    attn_implementation: str = "sdpa"
    # The token order (jrm_engine/sequence.py), saved with every checkpoint: a checkpoint trained on another order
    # would score with the wrong one, so loading refuses it. The only layout this version builds.
    token_layout: str = TOKEN_LAYOUT


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" | "editreward" (parquet / JSON Lines)
    path: str | None = None  # for source="editreward"
    n_train: int = 20000
    n_heldout: int = 2048
    seed: int = 0
    ties: str = "drop"  # "drop" | "tie_term"
    skip_bad: bool = False  # skip bad records (and report them) instead of stopping at the first


@dataclass
class LossConfig:
    alpha: float = 0.7  # L = (1 - alpha) * L_rank + alpha * L_LM
    rank_loss: str = "bt"  # "bt" | "bt_uncertainty"
    margin: float = 0.0
    impl: str = "auto"  # "auto" (triton on CUDA, torch on CPU) | "torch" | "triton"
    # Extra weight on the LM loss of each explanation's first token, the one predicted from the <reward> state the
    # reward head reads: L_LM + first_token_weight * (mean CE of those tokens). 0 is the paper's plain token mean.
    first_token_weight: float = 0.0


@dataclass
class TrainConfig:
    out: str = "runs/default"
    # Tuned for the tiny default on 2 CPU cores (~10 min): batch 32 at lr 3e-3 learnt more per sample than
    # batch 16 at 2e-3 or 4e-3, or batch 32 at 4.5e-3 (benchmarks/NOTES-cpu-training.md). 2,200 steps fit the
    # 10 minutes with bf16 steps (a CPU with AVX512-BF16); in fp32 1,400 did, and learnt less on each of the three
    # seeds run both ways (by 0.01, 0.11, 0.07). Without native bf16 these 2,200 steps take about 14 minutes.
    max_steps: int = 2200
    # Preference pairs (2 sequences each) per micro-batch, summed over all ranks: each of N ranks takes
    # batch_pairs / N of them, so an optimizer step sees batch_pairs * grad_accum pairs at any world size.
    batch_pairs: int = 32
    grad_accum: int = 1
    lr: float = 3e-3
    head_lr: float | None = None  # None = lr
    # Learning rate of the vision tower (patch embedding, blocks, merger); None = lr, 0 freezes it (no gradient is
    # computed for it). The tiny default freezes it: its random tower already separates every colour and shape
    # linearly, and training it let colour swamp shape, which most seeds then never learnt to name.
    vision_lr: float | None = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 350
    # The evaluations during training use the first eval_pairs held-out pairs (a curve); the final one uses all
    # data.n_heldout: at 0.82-0.85 its 95% interval is +-1.5 points on 2,048 pairs, against +-3.3 on 512.
    eval_pairs: int = 512
    save_every: int = 700
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # bf16 autocast of the training step where the device computes bf16 natively: CUDA, or a CPU with AVX512-BF16 or
    # AMX (1.4x faster steps of the tiny default on 2 cores); elsewhere, and in evaluation on the CPU, fp32.
    bf16: bool = True
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    # DataLoader worker processes that build the next micro-batches while the current step runs; 0 = in the loop.
    # Worth it where the step waits on a GPU or on image decoding; on 2 CPU cores a worker only takes a core from
    # the step (benchmarks/NOTES-cpu-training.md).
    data_workers: int = 0
    # Under torchrun: "ddp" | "fsdp" (FSDP2) | "auto" (ddp when the model fits one device, else fsdp) | "none"
    parallel: str = "auto"


@dataclass
class JRMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JRMConfig":
        cfg = cls()
        _merge(cfg, d, "")
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "JRMConfig":
        """The config saved with a checkpoint. A field added since the checkpoint was written takes the value that
        reproduces what that run did, not today's default."""
        cfg = cls.from_dict(d)
        for key, then in ADDED_SINCE.items():
            section, leaf = key.split(".")
            if leaf not in d.get(section, {}):
                setattr(getattr(cfg, section), leaf, then)
        return cfg

    def override(self, dotted: dict[str, Any]) -> "JRMConfig":
        """Apply {"loss.alpha": 0.0, ...}; values may be strings from the command line."""
        for key, value in dotted.items():
            _set_dotted(self, key, value)
        return self


# Fields added after checkpoints had been written -> the behaviour those checkpoints were trained with.
ADDED_SINCE: dict[str, Any] = {"train.vision_lr": None}  # before it, the vision tower trained at train.lr


def differences(a: "JRMConfig", b: "JRMConfig", ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: A -> B' for every field that differs, in field order."""
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return [f"{k}: {flat_a[k]!r} -> {flat_b[k]!r}" for k in flat_a if k not in ignore and flat_a[k] != flat_b[k]]


PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: trains on 2 CPU cores in about 8 minutes with native bf16, 14 without (README).
    "tiny": {},
    # A few steps, tiny everything: for tests and smoke runs.
    "smoke": {
        "model": {"tiny": {"text_hidden": 64, "text_layers": 2, "text_heads": 4, "text_kv_heads": 2,
                           "text_intermediate": 128, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2,
                           "vision_intermediate": 64, "mrope_section": [2, 3, 3]},
                  "image_size": 56, "max_length": 160},
        "data": {"n_train": 64, "n_heldout": 16},
        "train": {"max_steps": 4, "batch_pairs": 2, "eval_every": 2, "eval_pairs": 8, "save_every": 2},
    },
    # Fine-tuning a real local Qwen2.5-VL checkpoint on a GPU (the paper's recipe, scaled to one GPU).
    "qwen2.5-vl": {
        "model": {"image_size": 448, "max_length": 1024, "reward_head": "mlp"},
        "loss": {"rank_loss": "bt_uncertainty"},
        # vision_lr None: the pretrained vision tower is fine-tuned too, at lr (only the tiny default freezes it).
        "train": {"lr": 2e-6, "head_lr": 1e-4, "vision_lr": None, "batch_pairs": 8, "grad_accum": 8,
                  "max_steps": 3000, "eval_every": 200, "save_every": 200, "warmup_frac": 0.05},
    },
}


def load_config(preset: str = "tiny", file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> JRMConfig:
    """Preset, then file (YAML or TOML), then dotted overrides: each later source wins."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = JRMConfig.from_dict(PRESETS[preset])
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a mapping at the top level")
        _merge(cfg, data, "")
    if overrides:
        cfg.override(overrides)
    validate(cfg)
    return cfg


# Allowed values and ranges, checked once the sources are merged, so that a bad field stops the command before it
# writes anything (a step count of 0 would otherwise train nothing and save an untrained checkpoint).
CHOICES = {"model.reward_head": ("linear", "mlp"), "model.token_layout": (TOKEN_LAYOUT,),
           "data.source": ("synthetic", "editreward"), "data.ties": ("drop", "tie_term"),
           "loss.rank_loss": ("bt", "bt_uncertainty"), "loss.impl": ("auto", "torch", "triton")}
AT_LEAST_ONE = ("model.image_size", "model.max_length", "data.n_train", "data.n_heldout", "train.max_steps",
                "train.batch_pairs", "train.grad_accum", "train.eval_every", "train.eval_pairs", "train.save_every",
                "train.num_threads")
POSITIVE = ("train.lr", "train.head_lr", "train.grad_clip")
NON_NEGATIVE = ("loss.first_token_weight", "train.vision_lr")
UNIT_INTERVAL = ("loss.alpha", "train.warmup_frac")
# Fields whose default is None ("not set"): the type a set value must have, given by an example.
OPTIONAL = {"model.backbone": "", "data.path": "", "train.head_lr": 1.0, "train.num_threads": 1}


def validate(cfg: "JRMConfig") -> None:
    """Types (those of the defaults) and ranges of every field; a ValueError names the first bad one."""
    defaults = _flatten(JRMConfig().to_dict())
    for key, value in _flatten(cfg.to_dict()).items():
        default = OPTIONAL.get(key, defaults.get(key))
        if value is None or default is None:
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"config {key}: expected {type(default).__name__} like {default!r}, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"config {key}: must be one of {CHOICES[key]}, got {value!r}")
        if key in AT_LEAST_ONE and value < 1:
            raise ValueError(f"config {key}: must be at least 1, got {value}")
        if key in POSITIVE and not value > 0:
            raise ValueError(f"config {key}: must be positive, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise ValueError(f"config {key}: must be at least 0, got {value}")
        if key in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise ValueError(f"config {key}: must be in [0, 1], got {value}")
    if cfg.model.image_size % 28:
        raise ValueError(f"config model.image_size: must be a multiple of 28, got {cfg.model.image_size}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _merge(obj: Any, d: dict[str, Any], prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"unknown config key {prefix + key!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix + key!r} expects a mapping")
            _merge(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, current, prefix + key))


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    obj = cfg
    for p in parents:
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise ValueError(f"unknown config section {p!r} in {key!r}")
        obj = getattr(obj, p)
    if leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise ValueError(f"unknown config key {key!r}")
    if dataclasses.is_dataclass(getattr(obj, leaf)):
        raise ValueError(f"config key {key!r} is a section: set its fields ({key}.NAME=VALUE)")
    setattr(obj, leaf, _coerce(value, getattr(obj, leaf), key))


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert command-line strings (and YAML lists) to the type of the current value."""
    if isinstance(value, str) and not isinstance(current, str):
        if value.lower() in ("none", "null"):
            return None
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{key}: expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        # YAML reads "4e-3" as a string (its floats need a dot), so numbers are parsed directly.
        kinds = {int: (int,), float: (float,), type(None): (int, float)}.get(type(current), ())
        for kind in kinds:
            try:
                return kind(value)
            except ValueError:
                pass
        if kinds and current is not None:
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"{key}: cannot parse {value!r}") from e
        value = parsed
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
