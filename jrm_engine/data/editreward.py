"""EditReward-style preference data from local files: parquet, JSON Lines or a JSON array.

Two published schemas are recognised by their columns:

- EditReward-Data (Hugging Face `TIGER-Lab/EditReward-Data`): `instruction`, `source_image`, `left_image`,
  `right_image`, `vote_type` (`leftvote` | `rightvote` | `tie`), optional `left_/right_instruction_following_score`,
  `left_/right_quality_aesthetic_score`, `left_/right_overall_score`, optional id `dev_id` / `id` and task `category`.
- EditReward's training JSON (`prompt`, `path_src`, `path1`, `path2`, `tie_case`, `model1_dim1_score`, ...), where
  path1 is always the preferred edit unless `tie_case` is true.

Either may carry an explanation per candidate in `left_explanation` / `right_explanation` (JSON: `explanation1` /
`explanation2`); a record without one trains the ranking loss only. Images are file paths (relative to the data file)
or embedded bytes (the Hugging Face `{"bytes": ..., "path": ...}` struct; in JSON text, bytes are base64).

Bad records (missing image, empty instruction, unknown preference label, duplicate id) raise a ValueError naming the
record, or with `skip_bad` are skipped and counted by reason in a `LoadReport` that is printed and returned.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .records import Candidate, PreferencePair

# Matches the tiny backbone's `Whitespace` pre-tokenizer, so corpus_words() yields exactly its tokens.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")

_VOTES = {"leftvote": "a", "left": "a", "a": "a", "rightvote": "b", "right": "b", "b": "b", "tie": "tie"}
_SCORE_COLUMNS = {  # EditReward-Data column suffix -> Candidate.scores key
    "instruction_following_score": "instruction_following",
    "quality_aesthetic_score": "visual_quality",
    "overall_score": "overall",
}
_JSON_SCORE_COLUMNS = {"dim1_score": "instruction_following", "dim2_score": "visual_quality",
                       "overall_score": "overall"}
_HELDOUT_CAP = 0.10  # at most this fraction of the records is held out


class BadRecord(ValueError):
    """A record that cannot be trained or evaluated on; `reason` is a short category for reports."""

    def __init__(self, record: str, reason: str, detail: str):
        super().__init__(f"record {record!r}: {detail}")
        self.record, self.reason = record, reason


@dataclass
class LoadReport:
    path: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few messages

    def add(self, bad: BadRecord) -> None:
        self.skipped[bad.reason] += 1
        self.examples.setdefault(bad.reason, [])
        if len(self.examples[bad.reason]) < 3:
            self.examples[bad.reason].append(str(bad))

    def summary(self) -> str:
        lines = [f"{self.path}: {self.kept} of {self.total} records kept"]
        for reason, count in self.skipped.most_common():
            lines.append(f"  skipped {count} ({reason}), e.g. " + "; ".join(self.examples[reason]))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"path": self.path, "total": self.total, "kept": self.kept, "skipped": dict(self.skipped),
                "examples": self.examples}


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a parquet file, a JSON Lines file or a JSON array (or {"pairs": [...]}) as plain dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".ndjson"):
        import pyarrow.json as pj
        try:
            return pj.read_json(path).to_pylist()
        except Exception as e:  # pyarrow reports type clashes between rows; say which file
            raise ValueError(f"{path}: cannot read JSON Lines ({e})") from e
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("pairs"), list):
            data = data["pairs"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a JSON array of objects (or {{\"pairs\": [...]}})")
        return data
    raise ValueError(f"{path}: unsupported data file type {suffix!r}; use .parquet, .jsonl or .json")


def resolve_image(value: Any, base_dir: Path, record: str, what: str):
    """A row's image cell -> bytes or an existing Path. Raises BadRecord naming the record when it is missing."""
    if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        if data:
            return _as_bytes(data, record, what)
        value = path
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if isinstance(value, str) and value.strip():
        path = Path(value)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise BadRecord(record, "missing image", f"{what} file {path} not found")
        return path
    raise BadRecord(record, "missing image", f"no {what}")


def _as_bytes(data: Any, record: str, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    try:  # JSON text cannot hold raw bytes: base64
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise BadRecord(record, "missing image", f"{what} bytes are neither raw nor base64 ({e})") from e


def _first(row: dict, *names: str) -> Any:
    """The first of `names` with a value: columnar readers fill a column absent from a row with None."""
    return next((row[n] for n in names if row.get(n) is not None), None)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _scores(row: dict, columns: dict[str, str], prefix: str, record: str) -> dict[str, float]:
    out = {}
    for column, name in columns.items():
        value = row.get(prefix + column)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRecord(record, "bad score", f"{prefix + column} = {value!r} is not a finite number")
        out[name] = float(value)
    return out


def _preference(row: dict, record: str) -> str:
    raw = _first(row, "vote_type", "preference")
    if raw is not None:
        pref = _VOTES.get(str(raw).strip().lower())
        if pref is None:
            raise BadRecord(record, "bad label", f"preference {raw!r} is not one of leftvote/rightvote/tie")
        return pref
    tie = row.get("tie_case", False)
    if tie not in (True, False, None, 0, 1):
        raise BadRecord(record, "bad label", f"tie_case {tie!r} is not a boolean")
    return "tie" if tie else "a"  # EditReward's JSON: path1 is the preferred edit


def row_to_pair(row: dict, index: int, base_dir: Path, file_name: str) -> PreferencePair:
    """One row of either schema -> a validated PreferencePair (raises BadRecord)."""
    ident = _first(row, "id", "dev_id", "key")
    record = str(ident) if ident not in (None, "") else f"{file_name}:{index}"
    editreward_json = _first(row, "path1", "path_src") is not None
    if editreward_json:
        instruction = _text(_first(row, "prompt", "instruction"))
        cells = (row.get("path_src"), row.get("path1"), row.get("path2"))
        explanations = (row.get("explanation1"), row.get("explanation2"))
        scores = (_scores(row, _JSON_SCORE_COLUMNS, "model1_", record),
                  _scores(row, _JSON_SCORE_COLUMNS, "model2_", record))
    else:
        instruction = _text(row.get("instruction"))
        cells = (row.get("source_image"), row.get("left_image"), row.get("right_image"))
        explanations = (row.get("left_explanation"), row.get("right_explanation"))
        scores = (_scores(row, _SCORE_COLUMNS, "left_", record), _scores(row, _SCORE_COLUMNS, "right_", record))
    if instruction is None:
        raise BadRecord(record, "empty instruction", "empty instruction")
    preference = _preference(row, record)
    source, left, right = (resolve_image(c, base_dir, record, what)
                           for c, what in zip(cells, ("source image", "left edit", "right edit")))
    task = _first(row, "category", "task_type")
    pair = PreferencePair(id=record, source=source, instruction=instruction,
                          a=Candidate(left, _text(explanations[0]), scores[0]),
                          b=Candidate(right, _text(explanations[1]), scores[1]),
                          preference=preference, task_type=str(task) if task is not None else None)
    pair.validate()
    return pair


def load_editreward(path: str | Path, skip_bad: bool = False, quiet: bool = False
                    ) -> tuple[list[PreferencePair], LoadReport]:
    """All records of one file. Without skip_bad the first bad record raises; with it, bad records are counted."""
    path = Path(path)
    rows = read_rows(path)
    report = LoadReport(str(path), total=len(rows))
    pairs, seen = [], set()
    for i, row in enumerate(rows):
        try:
            pair = row_to_pair(row, i, path.parent, path.name)
            if pair.id in seen:
                raise BadRecord(pair.id, "duplicate id", "id occurs more than once in the file")
            seen.add(pair.id)
            pairs.append(pair)
        except BadRecord as bad:
            if not skip_bad:
                raise ValueError(f"{path}: {bad} (set data.skip_bad=true to skip bad records)") from None
            report.add(bad)
    report.kept = len(pairs)
    if report.skipped and not quiet:
        print(report.summary())
    return pairs, report


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float, skip_bad: bool) -> tuple[tuple[PreferencePair, ...], LoadReport]:
    pairs, report = load_editreward(path, skip_bad)
    return tuple(pairs), report


def _load(cfg: DataConfig) -> tuple[tuple[PreferencePair, ...], LoadReport]:
    if not cfg.path:
        raise ValueError("data.source='editreward' needs data.path (--data FILE)")
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    # Cached: the trainer reads the vocabulary and then the splits from the same file.
    return _load_cached(str(path.resolve()), path.stat().st_mtime, cfg.skip_bad)


def heldout_ids(ids: list[str], n_heldout: int, seed: int) -> set[str]:
    """A deterministic held-out subset: the ids with the smallest seeded hashes, independent of file order.

    At most 10% of the records (rounded down) are held out, so a small file still leaves most of it to train on.
    """
    n = min(max(0, n_heldout), int(len(ids) * _HELDOUT_CAP))
    rank = lambda i: hashlib.sha256(f"jrm-heldout/{seed}/{i}".encode()).hexdigest()
    return set(sorted(ids, key=rank)[:n])


def load_editreward_splits(cfg: DataConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) from cfg.path. All records not held out train (data.n_train applies to synthetic data).

    With data.ties == "drop", tie records are left out of both splits, and the count is printed.
    """
    pairs, report = _load(cfg)
    kept = list(pairs)
    if cfg.ties == "drop":
        ties = sum(p.preference == "tie" for p in kept)
        if ties:
            kept = [p for p in kept if p.preference != "tie"]
            print(f"{cfg.path}: left out {ties} tie records (data.ties=drop)")
    held = heldout_ids([p.id for p in kept], cfg.n_heldout, cfg.seed)
    train = [p for p in kept if p.id not in held]
    heldout = [p for p in kept if p.id in held]
    if not train:
        raise ValueError(f"{cfg.path}: no training records left ({report.summary()})")
    return train, heldout


def corpus_words(cfg: DataConfig) -> list[str]:
    """Every token of every kept record's instruction and explanations, sorted (the tiny tokenizer's vocabulary)."""
    pairs, _ = _load(cfg)
    words = set()
    for p in pairs:
        for text in (p.instruction, p.a.explanation, p.b.explanation):
            if text:
                words.update(_WORD_PATTERN.findall(text))
    return sorted(words)
