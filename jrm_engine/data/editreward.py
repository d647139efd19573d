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

The file is never held in memory (`rows.py`): loading makes one streaming pass that validates every row and keeps
an index of the good ones (about 17 bytes per record: file row, preference, a 64-bit id hash), and an
`EditRewardDataset` reads a record's row, with its image bytes or paths, only when it is accessed (images are
decoded later, by the collator), so a sampler that indexes by row makes each rank read only its own rows.

Bad records raise a ValueError naming the file, the row and the record, or with `skip_bad` are skipped and counted
by reason in a `LoadReport` that is printed and returned: a row that is not a JSON object ("bad row"), a missing,
unreadable or oversized image ("missing image" / "bad image": checked from the image header, without decoding
pixels), an empty instruction, a field of the wrong type ("bad type"), an unknown preference label ("bad label"),
a score that is not a finite number ("bad score"), a duplicate id. A file with no rows is an error.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..images import check_encoded
from .records import PREFERENCES, Candidate, PreferencePair
from .rows import RowError, RowFile, open_rows

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
    """Every row of a parquet file, a JSON Lines file or a JSON array (or {"pairs": [...]}) as plain dicts: for
    files small enough to hold (the benchmarks); training data goes through `load_editreward`, which streams."""
    rows = []
    for _, row in open_rows(path).scan():
        if isinstance(row, RowError):
            raise row
        rows.append(row)
    return rows


def resolve_image(value: Any, base_dir: Path, record: str, what: str):
    """A row's image cell -> bytes or an existing Path whose header PIL reads (format and size within the pixel
    limit; no pixel is decoded). Raises BadRecord naming the record when it is missing or broken."""
    if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        if data:
            return _checked(_as_bytes(data, record, what), record, what)
        value = path
    if isinstance(value, (bytes, bytearray)) and value:
        return _checked(bytes(value), record, what)
    if isinstance(value, str) and value.strip():
        path = Path(value)
        path = path if path.is_absolute() else base_dir / path
        if "\0" in value or not path.is_file():  # a NUL makes is_file() raise, not answer
            raise BadRecord(record, "missing image", f"{what} file {path} not found")
        return _checked(path, record, what)
    if value not in (None, "", b""):
        raise BadRecord(record, "bad type", f"{what} has type {type(value).__name__}, expected a path, bytes or "
                                            "{\"bytes\": ..., \"path\": ...}")
    raise BadRecord(record, "missing image", f"no {what}")


def _checked(image: bytes | Path, record: str, what: str) -> bytes | Path:
    try:
        check_encoded(image, name=what)
    except ValueError as e:
        raise BadRecord(record, "bad image", str(e)) from None
    return image


def _as_bytes(data: Any, record: str, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    try:  # JSON text cannot hold raw bytes: base64
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise BadRecord(record, "bad image", f"{what} bytes are neither raw nor base64 ({e})") from e


def _first(row: dict, *names: str) -> Any:
    """The first of `names` with a value: columnar readers fill a column absent from a row with None."""
    return next((row[n] for n in names if row.get(n) is not None), None)


def _text(value: Any, record: str, what: str) -> str | None:
    """A text field, stripped; None when absent or blank. A value that is not a string is a bad record, not
    silently "absent" (a numeric explanation would otherwise train the ranking loss only without a word)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRecord(record, "bad type", f"{what} has type {type(value).__name__}, expected a string")
    return value.strip() or None


def _scores(row: dict, columns: dict[str, str], prefix: str, record: str) -> dict[str, float]:
    out = {}
    for column, name in columns.items():
        value = row.get(prefix + column)
        if value is None:
            continue
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if not math.isfinite(number):  # float() of an int beyond float range is inf
            raise BadRecord(record, "bad score", f"{prefix + column} = {value!r} is not a finite number")
        out[name] = number
    return out


def _preference(row: dict, record: str, editreward_json: bool) -> str:
    raw = _first(row, "vote_type", "preference")
    if raw is None and not editreward_json:  # only EditReward's JSON has a default (path1 preferred)
        raise BadRecord(record, "bad label", "no vote_type")
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
        instruction = _text(_first(row, "prompt", "instruction"), record, "prompt")
        cells = (row.get("path_src"), row.get("path1"), row.get("path2"))
        explanations = (row.get("explanation1"), row.get("explanation2"))
        scores = (_scores(row, _JSON_SCORE_COLUMNS, "model1_", record),
                  _scores(row, _JSON_SCORE_COLUMNS, "model2_", record))
    else:
        instruction = _text(row.get("instruction"), record, "instruction")
        cells = (row.get("source_image"), row.get("left_image"), row.get("right_image"))
        explanations = (row.get("left_explanation"), row.get("right_explanation"))
        scores = (_scores(row, _SCORE_COLUMNS, "left_", record), _scores(row, _SCORE_COLUMNS, "right_", record))
    if instruction is None:
        raise BadRecord(record, "empty instruction", "empty instruction")
    preference = _preference(row, record, editreward_json)
    source, left, right = (resolve_image(c, base_dir, record, what)
                           for c, what in zip(cells, ("source image", "left edit", "right edit")))
    task = _first(row, "category", "task_type")
    pair = PreferencePair(id=record, source=source, instruction=instruction,
                          a=Candidate(left, _text(explanations[0], record, "left explanation"), scores[0]),
                          b=Candidate(right, _text(explanations[1], record, "right explanation"), scores[1]),
                          preference=preference, task_type=str(task) if task is not None else None)
    pair.validate()
    return pair


class EditRewardDataset(Sequence[PreferencePair]):
    """The kept records of one data file, in file order: `len(ds)`, `ds[i]` reads and re-validates record i's
    row (its images stay bytes or paths until the collator decodes them), `ds[a:b]` and `ds.subset(positions)`
    are views sharing the file. Not thread-safe across `ds[i]` calls of one instance beyond the row reader's lock."""

    def __init__(self, rows: RowFile, file_rows: np.ndarray, preferences: np.ndarray, keys: np.ndarray):
        self.rows = rows
        self.file_rows = file_rows  # int64 [N]: the file row of each record
        self.preferences = preferences  # int8 [N]: index into PREFERENCES
        self.keys = keys  # uint64 [N]: held-out rank key of each record's id (heldout_key)

    def __len__(self) -> int:
        return len(self.file_rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.rows.path}: record {i} out of range [0, {len(self)})")
        row = int(self.file_rows[i])
        try:
            return row_to_pair(self.rows.row(row), row, self.rows.path.parent, self.rows.path.name)
        except BadRecord as bad:  # validated when loaded: the file changed since
            raise ValueError(f"{self.rows.path} row {row}: {bad} (the file changed after it was loaded?)") from None

    def subset(self, positions) -> "EditRewardDataset":
        positions = np.asarray(positions, dtype=np.int64)
        return EditRewardDataset(self.rows, self.file_rows[positions], self.preferences[positions],
                                 self.keys[positions])


def heldout_key(record_id: str, seed: int) -> int:
    """A record's rank for the held-out draw: the top 64 bits of sha256("jrm-heldout/{seed}/{id}")."""
    return int.from_bytes(hashlib.sha256(f"jrm-heldout/{seed}/{record_id}".encode()).digest()[:8], "big")


def _smallest(keys: np.ndarray, n_heldout: int) -> np.ndarray:
    """Positions of the n smallest keys (ties, which 64-bit keys of distinct ids practically never have, go to the
    earlier position); n is capped at 10% of the records, rounded down."""
    n = min(max(0, n_heldout), int(len(keys) * _HELDOUT_CAP))
    return np.sort(np.argsort(keys, kind="stable")[:n])


def load_editreward(path: str | Path, skip_bad: bool = False, quiet: bool = False, seed: int = 0
                    ) -> tuple[EditRewardDataset, LoadReport]:
    """The records of one file, as a lazily read dataset, after one streaming pass that validates every row.
    Without skip_bad the first bad record raises; with it, bad records are counted. `seed` keys the held-out draw."""
    path = Path(path)
    rows = open_rows(path)
    if not len(rows):
        raise ValueError(f"{path}: the file holds no records")
    report = LoadReport(str(path), total=len(rows))
    file_rows, preferences, keys = array("q"), array("b"), array("Q")  # compact while growing: 17 bytes a record

    def bad_row(bad: BadRecord, row: int) -> None:
        if not skip_bad:
            raise ValueError(f"{path} row {row}: {bad} (set data.skip_bad=true to skip bad records)") from None
        report.add(bad)

    for i, row in rows.scan():
        try:
            if isinstance(row, RowError):
                raise BadRecord(f"{path.name}:{i}", "bad row", row.detail)
            pair = row_to_pair(row, i, path.parent, path.name)
        except BadRecord as bad:
            bad_row(bad, i)
            continue
        file_rows.append(i)
        preferences.append(PREFERENCES.index(pair.preference))
        keys.append(heldout_key(pair.id, seed))
    dataset = EditRewardDataset(rows, np.frombuffer(file_rows, np.int64) if file_rows else np.zeros(0, np.int64),
                                np.frombuffer(preferences, np.int8) if preferences else np.zeros(0, np.int8),
                                np.frombuffer(keys, np.uint64) if keys else np.zeros(0, np.uint64))
    dataset = dataset.subset(_first_of_each_id(dataset, bad_row))
    report.kept = len(dataset)
    if report.skipped and not quiet:
        print(report.summary())
    return dataset, report


def _first_of_each_id(dataset: EditRewardDataset, bad_row) -> np.ndarray:
    """Positions to keep: all but the second and later records of an id. Equal ids have equal keys, so only
    records whose key was seen before are read again, to tell a duplicate from a (2^-64-rare) hash collision."""
    order = np.argsort(dataset.keys, kind="stable")  # equal keys stay in file order
    sorted_keys = dataset.keys[order]
    later = order[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if not len(later):
        return np.arange(len(dataset))
    drop = set()
    for position in sorted(later.tolist()):
        pair = dataset[position]
        same = np.flatnonzero(dataset.keys[:position] == dataset.keys[position])
        first = next((int(p) for p in same if p not in drop and dataset[int(p)].id == pair.id), None)
        if first is not None:
            drop.add(position)
            bad_row(BadRecord(pair.id, "duplicate id", f"id occurs more than once in the file (first at row "
                                                       f"{int(dataset.file_rows[first])})"),
                    int(dataset.file_rows[position]))
    return np.setdiff1d(np.arange(len(dataset)), np.fromiter(drop, np.int64, len(drop)), assume_unique=True)


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float, skip_bad: bool, seed: int) -> tuple[EditRewardDataset, LoadReport]:
    return load_editreward(path, skip_bad, seed=seed)


def _load(cfg: DataConfig) -> tuple[EditRewardDataset, LoadReport]:
    if not cfg.path:
        raise ValueError("data.source='editreward' needs data.path (--data FILE)")
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    # Cached: the trainer reads the vocabulary and then the splits from the same file.
    return _load_cached(str(path.resolve()), path.stat().st_mtime, cfg.skip_bad, cfg.seed)


def heldout_ids(ids: list[str], n_heldout: int, seed: int) -> set[str]:
    """A deterministic held-out subset: the ids with the smallest seeded hashes (`heldout_key`), independent of
    file order. At most 10% of the records (rounded down) are held out, so a small file still leaves most of it
    to train on."""
    keys = np.array([heldout_key(i, seed) for i in ids], dtype=np.uint64)
    return {ids[p] for p in _smallest(keys, n_heldout)}


def load_editreward_splits(cfg: DataConfig) -> tuple[EditRewardDataset, EditRewardDataset]:
    """(train, held-out) from cfg.path, as views of one lazily read dataset. All records not held out train
    (data.n_train applies to synthetic data).

    With data.ties == "drop", tie records are left out of both splits, and the count is printed.
    """
    dataset, report = _load(cfg)
    kept = np.arange(len(dataset))
    if cfg.ties == "drop":
        ties = dataset.preferences == PREFERENCES.index("tie")
        if ties.any():
            kept = np.flatnonzero(~ties)
            print(f"{cfg.path}: left out {int(ties.sum())} tie records (data.ties=drop)")
    held = kept[_smallest(dataset.keys[kept], cfg.n_heldout)]
    train = np.setdiff1d(kept, held, assume_unique=True)
    if not len(train):
        raise ValueError(f"{cfg.path}: no training records left ({report.summary()})")
    return dataset.subset(train), dataset.subset(held)


def corpus_words(cfg: DataConfig) -> list[str]:
    """Every token of every kept record's instruction and explanations, sorted (the tiny tokenizer's vocabulary).
    One more pass over the file, in order (each chunk is read once)."""
    dataset, _ = _load(cfg)
    words = set()
    for p in dataset:
        for text in (p.instruction, p.a.explanation, p.b.explanation):
            if text:
                words.update(_WORD_PATTERN.findall(text))
    return sorted(words)
