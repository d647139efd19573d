"""The record every data source produces: one preference between two edits of one source image."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..vision import ImageLike

PREFERENCES = ("a", "b", "tie")


@dataclass
class Candidate:
    image: ImageLike
    explanation: str | None = None  # None: this candidate trains the ranking loss only
    scores: dict[str, float] = field(default_factory=dict)  # e.g. instruction_following, visual_quality


@dataclass
class PreferencePair:
    id: str
    source: ImageLike
    instruction: str
    a: Candidate
    b: Candidate
    preference: str  # "a" | "b" | "tie"
    task_type: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming this record when it cannot be trained on."""
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"record {self.id!r}: empty instruction")
        if self.preference not in PREFERENCES:
            raise ValueError(f"record {self.id!r}: preference {self.preference!r} not in {PREFERENCES}")
