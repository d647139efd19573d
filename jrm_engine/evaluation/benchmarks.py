"""Loaders for the benchmark formats, each turned into candidates to score and items to judge.

A *candidate* is one (source image, instruction, edited image) that a scalar reward model scores once; it has a
key, which is also its key in a `--scores` file. An *item* is what a metric judges (a pair or a group); it names the
candidate keys it needs. Key formats, per benchmark:

- `editreward-bench` (EditScore's version, rows `key`, `instruction`, `input_image`, `output_images`, `task_type`,
  `dimension`): the benchmark's own per-image keys, `key[0]` for `output_images[0]` (preferred) and `key[1]` for
  `output_images[1]`. A key shared by several rows (the same edit judged on several dimensions) is scored once.
- `editreward-bench-tiger` (TIGER-Lab's version, rows `id`, `instruction`, `source_image`, `candidate_1`,
  `candidate_2`, `ranking`, `comparison_type`, `dataset`): `<group>:<letter>`, where the group is the row id up to
  its first `_` (as TIGER-Lab's scripts group rows) and the letter comes from `comparison_type` (`AvsC`: candidate_1
  is A, candidate_2 is C; absent: A and B).
- `mmrb2-edit` (MMRB2's `edit.json`, `{"pairs": [...]}` with `id`, `prompt_content`, `response_a`, `response_b`,
  `chosen`): `<id>:A` and `<id>:B`.
- `synthetic` (the built-in held-out split): `<pair id>:a` and `<pair id>:b`.

MMRB2 prompts may hold several input images, but a scalar JRM reads one source image. `multi_image="first"` (the
default) scores against the first input image and records how many were ignored; `"concat"` pastes all input images
side by side (same height) into one source image. Either way the multi-image subset is reported separately.

Bad rows (a missing image, an empty instruction, an unknown label, an incomplete group, a key reused for different
content) raise one ValueError that names them, or with `exclude_bad` are left out and listed in `Benchmark.excluded`.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ..data.editreward import BadRecord, read_rows, resolve_image
from ..vision import ImageLike

BENCHMARKS = ("editreward-bench", "editreward-bench-tiger", "mmrb2-edit", "synthetic")
MAX_NAMED = 10  # bad rows named in one error message


@dataclass(frozen=True)
class SideBySide:
    """Several input images that become one source image only when scored (kept lazy to save memory)."""

    images: tuple[ImageLike, ...]


@dataclass
class CandidateInput:
    key: str
    source: ImageLike | SideBySide
    instruction: str
    image: ImageLike


@dataclass
class PairItem:
    """A pair judged by strict comparison: correct iff score(keys[0]) > score(keys[1]) (keys[0] is preferred)."""

    name: str
    keys: tuple[str, str]
    category: str  # task type / subset / operation
    dimension: str | None = None  # EditScore's dimension; scores may differ per dimension


@dataclass
class GroupItem:
    """TIGER-Lab: K candidates with human labels for every pair (i < j): +1 i better, -1 j better, 0 tie."""

    name: str
    keys: tuple[str, ...]
    labels: dict[tuple[int, int], int]

    @property
    def k(self) -> int:
        return len(self.keys)


@dataclass
class Benchmark:
    name: str
    path: str | None
    candidates: dict[str, CandidateInput]
    items: list
    excluded: list[str] = field(default_factory=list)  # "row: reason" of rows left out at load
    notes: list[str] = field(default_factory=list)


class _Collector:
    """Gathers bad rows so one error names all of them (or, with exclude_bad, so the report lists them)."""

    def __init__(self, bench: str, path: Path | None, exclude_bad: bool):
        self.bench, self.path, self.exclude_bad = bench, path, exclude_bad
        self.bad: list[str] = []

    def add(self, message: str) -> None:
        self.bad.append(message)

    def finish(self) -> list[str]:
        if self.bad and not self.exclude_bad:
            named = "\n  ".join(self.bad[:MAX_NAMED])
            more = f"\n  ... and {len(self.bad) - MAX_NAMED} more" if len(self.bad) > MAX_NAMED else ""
            raise ValueError(f"{self.bench} {self.path}: {len(self.bad)} bad rows:\n  {named}{more}\n"
                             "(pass --exclude-bad to leave them out and report them)")
        return self.bad


class _CandidateTable:
    """Candidates by key; a key seen again must carry the same instruction and images."""

    def __init__(self):
        self.candidates: dict[str, CandidateInput] = {}
        self._identity: dict[str, tuple] = {}

    def add(self, cand: CandidateInput, record: str) -> None:
        ident = (cand.instruction, _identity(cand.source), _identity(cand.image))
        if cand.key in self._identity:
            if self._identity[cand.key] != ident:
                raise BadRecord(record, "key conflict",
                                f"key {cand.key!r} was already used for a different instruction or image")
            return
        self._identity[cand.key] = ident
        self.candidates[cand.key] = cand


def _identity(image: Any) -> Any:
    if isinstance(image, SideBySide):
        return tuple(_identity(i) for i in image.images)
    if isinstance(image, bytes):
        return hashlib.sha1(image).hexdigest()
    return str(image)


def _instruction(value: Any, record: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(record, "empty instruction", "empty instruction")
    return value.strip()


def _row_name(row: dict, index: int, *fields: str) -> str:
    for f in fields:
        if row.get(f) not in (None, ""):
            value = row[f]
            return str(list(value)) if isinstance(value, (list, tuple)) else str(value)
    return f"row {index}"


# ---------------------------------------------------------------- EditReward-Bench, EditScore's version

def load_editscore(path: str | Path, exclude_bad: bool = False) -> Benchmark:
    path = Path(path)
    rows = read_rows(path)
    bad = _Collector("editreward-bench", path, exclude_bad)
    table, items = _CandidateTable(), []
    for i, row in enumerate(rows):
        record = _row_name(row, i, "key")
        try:
            keys, outputs = row.get("key"), row.get("output_images")
            if not isinstance(keys, (list, tuple)) or len(keys) != 2 or keys[0] == keys[1]:
                raise BadRecord(record, "bad key", f"key must list two different ids, got {keys!r}")
            if not isinstance(outputs, (list, tuple)) or len(outputs) != 2:
                raise BadRecord(record, "missing image", "output_images must hold [preferred, rejected]")
            task, dim = row.get("task_type"), row.get("dimension")
            if not task or not dim:
                raise BadRecord(record, "missing field", "task_type and dimension are required")
            instruction = _instruction(row.get("instruction"), record)
            source = resolve_image(row.get("input_image"), path.parent, record, "input_image")
            images = [resolve_image(o, path.parent, record, f"output_images[{j}]") for j, o in enumerate(outputs)]
            for key, image in zip(keys, images):
                table.add(CandidateInput(str(key), source, instruction, image), record)
            items.append(PairItem(f"row {i} {record}", (str(keys[0]), str(keys[1])), str(task), str(dim)))
        except BadRecord as e:
            bad.add(f"row {i}: {e}")
    return Benchmark("editreward-bench", str(path), table.candidates, items, bad.finish())


# ---------------------------------------------------------------- EditReward-Bench, TIGER-Lab's version

_LETTERS = "ABCD"


def _comparison_letters(row: dict, record: str) -> tuple[str, str]:
    kind = row.get("comparison_type")
    if kind in (None, ""):
        return "A", "B"
    m = re.fullmatch(r"\s*([A-D])\s*vs\s*([A-D])\s*", str(kind), re.IGNORECASE)
    if not m or m.group(1).upper() == m.group(2).upper():
        raise BadRecord(record, "bad label", f"comparison_type {kind!r} is not like 'AvsC'")
    return m.group(1).upper(), m.group(2).upper()


def _ranking_label(ranking: Any, first: str, second: str, record: str) -> int:
    """+1: first better, -1: second better, 0: tie. TIGER-Lab writes ties as 'A=B', 'A=B=Good' or 'A=B=Bad'."""
    text = str(ranking).strip().upper().replace(" ", "") if ranking is not None else ""
    if re.fullmatch(f"({first}={second}|{second}={first})(=GOOD|=BAD)?", text):
        return 0
    if text in (f"{first}>{second}", f"{second}<{first}"):
        return 1
    if text in (f"{second}>{first}", f"{first}<{second}"):
        return -1
    raise BadRecord(record, "bad label", f"ranking {ranking!r} does not compare {first} and {second}")


def load_tiger(path: str | Path, exclude_bad: bool = False) -> Benchmark:
    path = Path(path)
    rows = read_rows(path)
    bad = _Collector("editreward-bench-tiger", path, exclude_bad)
    by_group: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for i, row in enumerate(rows):
        ident = str(row.get("id") or f"row{i}")
        by_group[ident.split("_")[0]].append((i, row))  # TIGER-Lab groups rows by the id before its first "_"
    table, items = _CandidateTable(), []
    for group, members in by_group.items():
        try:
            items.append(_tiger_group(group, members, path.parent, table))
        except BadRecord as e:
            bad.add(f"group {group} (rows {', '.join(str(i) for i, _ in members)}): {e}")
    return Benchmark("editreward-bench-tiger", str(path), table.candidates, items, bad.finish())


def _tiger_group(group: str, members: list[tuple[int, dict]], base: Path, table: _CandidateTable) -> GroupItem:
    labels, letters, pending = {}, set(), []
    declared = {str(r.get("dataset")) for _, r in members if r.get("dataset")}
    for i, row in members:
        record = _row_name(row, i, "id")
        first, second = _comparison_letters(row, record)
        label = _ranking_label(row.get("ranking"), first, second, record)
        instruction = _instruction(row.get("instruction"), record)
        source = resolve_image(row.get("source_image"), base, record, "source_image")
        for letter, column in ((first, "candidate_1"), (second, "candidate_2")):
            image = resolve_image(row.get(column), base, record, column)
            pending.append((CandidateInput(f"{group}:{letter}", source, instruction, image), record))
        a, b = _LETTERS.index(first), _LETTERS.index(second)
        pair, label = ((a, b), label) if a < b else ((b, a), -label)
        if pair in labels:
            raise BadRecord(group, "duplicate pair", f"pair {first}/{second} appears twice")
        labels[pair] = label
        letters.update((first, second))
    k = len(letters)
    if declared and declared != {f"{k}pair"}:
        raise BadRecord(group, "incomplete group", f"dataset says {sorted(declared)} but rows name {k} candidates")
    if sorted(letters) != list(_LETTERS[:k]) or set(labels) != set(combinations(range(k), 2)):
        raise BadRecord(group, "incomplete group", f"{k} candidates need all {k * (k - 1) // 2} pairs, "
                                                    f"found {len(labels)}")
    for cand, record in pending:
        table.add(cand, record)
    return GroupItem(group, tuple(f"{group}:{c}" for c in _LETTERS[:k]), labels)


# ---------------------------------------------------------------- MMRB2, image editing

def _content(items: Any, record: str, what: str) -> list[tuple[str, Any]]:
    """MMRB2 content lists hold [kind, value] pairs (kind "image" or "text")."""
    if not isinstance(items, list):
        raise BadRecord(record, "missing field", f"{what} must be a list of [kind, value]")
    out = []
    for entry in items:
        if isinstance(entry, dict):
            entry = (entry.get("type"), entry.get("content", entry.get("value")))
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise BadRecord(record, "missing field", f"{what} entry {entry!r} is not [kind, value]")
        out.append((str(entry[0]), entry[1]))
    return out


def load_mmrb2(path: str | Path, exclude_bad: bool = False, multi_image: str = "first") -> Benchmark:
    if multi_image not in ("first", "concat"):
        raise ValueError(f"multi_image must be 'first' or 'concat', got {multi_image!r}")
    path = Path(path)
    rows = read_rows(path)
    bad = _Collector("mmrb2-edit", path, exclude_bad)
    table, items, ignored_images = _CandidateTable(), [], 0
    for i, row in enumerate(rows):
        record = _row_name(row, i, "id", "pair_id")
        try:
            chosen = str(row.get("chosen", row.get("human_preference", ""))).strip().upper()
            if chosen not in ("A", "B"):
                raise BadRecord(record, "bad label", f"chosen {chosen!r} is not A or B")
            prompt = _content(row.get("prompt_content"), record, "prompt_content")
            text = " ".join(str(v).strip() for kind, v in prompt if kind == "text" and str(v).strip())
            instruction = _instruction(text, record)
            inputs = [resolve_image(v, path.parent, record, f"prompt image {j}")
                      for j, (kind, v) in enumerate(prompt) if kind == "image"]
            if not inputs:
                raise BadRecord(record, "missing image", "prompt_content has no input image to edit")
            outputs = {}
            for side in ("A", "B"):
                response = row.get(f"response_{side.lower()}") or {}
                content = _content(response.get("response_content"), record, f"response_{side.lower()}")
                images = [v for kind, v in content if kind == "image"]
                if not images:
                    raise BadRecord(record, "missing image", f"response_{side.lower()} has no image")
                outputs[side] = resolve_image(images[0], path.parent, record, f"response_{side.lower()} image")
            if len(inputs) == 1 or multi_image == "first":
                source = inputs[0]
            else:
                source = SideBySide(tuple(inputs))
            subset = "single" if len(inputs) == 1 else "multi"
            for side in ("A", "B"):
                table.add(CandidateInput(f"{record}:{side}", source, instruction, outputs[side]), record)
            other = "B" if chosen == "A" else "A"
            items.append(PairItem(record, (f"{record}:{chosen}", f"{record}:{other}"), subset))
            if multi_image == "first":
                ignored_images += len(inputs) - 1
        except BadRecord as e:
            bad.add(f"row {i}: {e}")
    bench = Benchmark("mmrb2-edit", str(path), table.candidates, items, bad.finish())
    multi = sum(it.category == "multi" for it in items)
    if multi:
        bench.notes.append(f"multi-image prompts ({multi} pairs): " + (
            f"scored against the first input image; {ignored_images} further input images ignored"
            if multi_image == "first" else "input images pasted side by side into one source image"))
    return bench


# ---------------------------------------------------------------- the built-in synthetic held-out split

def load_synthetic(n: int, seed: int, image_size: int) -> Benchmark:
    from ..data.synthetic import SyntheticEditDataset

    data = SyntheticEditDataset(n, seed=seed, image_size=image_size, split="heldout")
    candidates, items = {}, []
    for i in range(len(data)):
        pair = data[i]
        for side, cand in (("a", pair.a), ("b", pair.b)):
            key = f"{pair.id}:{side}"
            candidates[key] = CandidateInput(key, pair.source, pair.instruction, cand.image)
        if pair.preference == "tie":
            continue
        chosen, other = ("a", "b") if pair.preference == "a" else ("b", "a")
        items.append(PairItem(pair.id, (f"{pair.id}:{chosen}", f"{pair.id}:{other}"), pair.task_type or "all"))
    return Benchmark("synthetic", None, candidates, items,
                     notes=[f"SyntheticEditDataset(n={n}, seed={seed}, image_size={image_size}, split='heldout')"])


def load_benchmark(name: str, path: str | Path | None, *, exclude_bad: bool = False, multi_image: str = "first",
                   synthetic_n: int = 512, synthetic_seed: int = 0, image_size: int = 84) -> Benchmark:
    if name == "synthetic":
        return load_synthetic(synthetic_n, synthetic_seed, image_size)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")
    if path is None:
        raise ValueError(f"--bench {name} needs --data PATH (the benchmark file)")
    if name == "editreward-bench":
        return load_editscore(path, exclude_bad)
    if name == "editreward-bench-tiger":
        return load_tiger(path, exclude_bad)
    return load_mmrb2(path, exclude_bad, multi_image)
