"""What an exported engine fixes: text buckets, batch range, positions mode, dtype. Saved in every manifest."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExportSettings:
    # Instruction lengths are padded up to the smallest bucket that fits. One artifact serves every bucket (the
    # text length is a dynamic dim in [min bucket, max bucket]); the buckets bound the shapes a runtime sees
    # (one CUDA graph / TensorRT profile each) and the padding waste (at most one bucket step).
    buckets: tuple[int, ...] = (16, 32, 64, 128)
    max_batch: int = 32
    opt_batch: int = 8  # TensorRT tunes its kernels for this batch
    max_group: int = 16  # candidates per group in the candidate pass
    positions: str = "mrope"  # what RewardModel trains with (export/graph.py POSITION_MODES)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.buckets or sorted(set(self.buckets)) != list(self.buckets) or self.buckets[0] < 2:
            raise ValueError(f"buckets must be strictly increasing and >= 2 (export specialises sizes 0 and 1), "
                             f"got {self.buckets}")
        if self.max_group < 2:
            raise ValueError(f"max_group must be >= 2 (export specialises sizes 0 and 1), got {self.max_group}")
        if self.max_batch < 2 or not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need max_batch >= 2 and 1 <= opt_batch <= max_batch, got {self.max_batch}, "
                             f"{self.opt_batch}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def bucket_for(self, length: int, *, name: str = "instruction") -> int:
        for b in self.buckets:
            if length <= b:
                return b
        raise ValueError(f"{name}: {length} tokens exceeds the largest text bucket ({self.buckets[-1]}); "
                         f"re-export with a larger bucket or shorten the instruction")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["buckets"] = list(self.buckets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExportSettings":
        return cls(**{**d, "buckets": tuple(d["buckets"])})
