"""Which preference data a run trains and evaluates on, as chosen by DataConfig."""
from __future__ import annotations

from collections.abc import Sequence

from ..config import DataConfig
from .records import PreferencePair


def build_datasets(cfg: DataConfig, image_size: int) -> tuple[Sequence[PreferencePair], Sequence[PreferencePair]]:
    """(train, held-out) sequences of PreferencePair."""
    if cfg.source == "synthetic":
        from .synthetic import SyntheticEditDataset
        tie_rate = 0.0 if cfg.ties == "drop" else 0.1
        return (SyntheticEditDataset(cfg.n_train, seed=cfg.seed, image_size=image_size, split="train",
                                     tie_rate=tie_rate),
                SyntheticEditDataset(cfg.n_heldout, seed=cfg.seed, image_size=image_size, split="heldout"))
    if cfg.source == "editreward":
        from .editreward import load_editreward_splits
        return load_editreward_splits(cfg)
    raise ValueError(f"data.source must be 'synthetic' or 'editreward', got {cfg.source!r}")


def vocabulary_for(cfg: DataConfig) -> list[str]:
    """Words the tiny backbone's tokenizer must know."""
    if cfg.source == "synthetic":
        from .synthetic import vocabulary
        return vocabulary()
    from .editreward import corpus_words
    return corpus_words(cfg)
