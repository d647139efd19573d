"""The rows of a data file (parquet, JSON Lines or a JSON array) as plain dicts, read on demand: a pass over the
file and the read of one row both hold a bounded amount of it in memory, so a million-row file costs an index,
not the file.

- parquet: a pass streams record batches of about `chunk_bytes` of uncompressed data; a row is read from its row
  group in such a chunk, and the last few chunks are kept, so reading rows in order decodes each chunk once and a
  random row costs one chunk. A file written with huge row groups still reads within the bound, only slower (the
  chunks before the row's are read and dropped); Hugging Face `datasets` writes image data in small row groups.
- JSON Lines: opening records each line's byte offset (8 bytes per row); a row is one seek and one `json.loads`.
  A line that is not a JSON object is a `RowError` naming the file and line, not a failure of the whole file.
- a JSON array (or {"pairs": [...]}) cannot be read in parts, so it is parsed whole: use JSON Lines or parquet for
  large data.
"""
from __future__ import annotations

import json
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_BYTES = 32 << 20  # uncompressed bytes of one parquet read: the per-process bound on what a read holds
_CACHED_CHUNKS = 2  # a pass over row i's chunk and its neighbour's, as a sampler's micro-batch may straddle them


class RowError(ValueError):
    """A row that is not a record at all (unparseable JSON, not an object); `row` is its index in the file."""

    def __init__(self, path: Path, row: int, detail: str):
        super().__init__(f"{path} row {row}: {detail}")
        self.row, self.detail = row, detail


class RowFile:
    """`len(f)` rows; `f.row(i)` -> dict (raises RowError); `f.scan()` yields (i, dict or RowError) in order."""

    path: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def row(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def scan(self) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        for i in range(len(self)):
            try:
                yield i, self.row(i)
            except RowError as e:
                yield i, e

    def _check(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range [0, {len(self)})")
        return int(i)


def open_rows(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> RowFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return ParquetRows(path, chunk_bytes)
    if suffix in (".jsonl", ".ndjson"):
        return JsonLinesRows(path)
    if suffix == ".json":
        return JsonArrayRows(path)
    raise ValueError(f"{path}: unsupported data file type {suffix!r}; use .parquet, .jsonl or .json")


class ParquetRows(RowFile):
    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES):
        self.path, self.chunk_bytes = path, int(chunk_bytes)
        meta = self._file().metadata
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # row group g: [starts[g], starts[g+1])
        # rows per chunk, per row group, from its mean uncompressed row size
        self._chunk_rows = [max(1, min(n, self.chunk_bytes * n // max(size, 1))) for n, size in zip(counts, sizes)]
        self._cache: OrderedDict[tuple[int, int], Any] = OrderedDict()  # (group, first row in group) -> batch
        self._lock = threading.Lock()

    def _file(self):
        import pyarrow.parquet as pq

        if getattr(self, "_pf", None) is None:
            try:
                # buffer_size: read column chunks in 1 MiB pieces instead of whole, so a chunk's bound holds
                self._pf = pq.ParquetFile(self.path, buffer_size=1 << 20)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for a non-parquet file
                raise ValueError(f"{self.path}: cannot read parquet ({e})") from e
        return self._pf

    def __getstate__(self):  # a worker process reopens the file
        state = dict(self.__dict__)
        state.update(_pf=None, _cache=OrderedDict(), _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def row(self, i: int) -> dict[str, Any]:
        i = self._check(i)
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        local = i - int(self._starts[g])
        with self._lock:
            batch, first = self._chunk(g, local)
        return batch.slice(local - first, 1).to_pylist()[0]

    def _chunk(self, g: int, local: int):
        for (group, first), batch in self._cache.items():
            if group == g and first <= local < first + batch.num_rows:
                self._cache.move_to_end((group, first))
                return batch, first
        first = 0
        for batch in self._file().iter_batches(batch_size=self._chunk_rows[g], row_groups=[g], use_threads=False):
            if local < first + batch.num_rows:
                self._cache[(g, first)] = batch
                while len(self._cache) > _CACHED_CHUNKS:
                    self._cache.popitem(last=False)
                return batch, first
            first += batch.num_rows
        raise IndexError(f"{self.path}: row {local} of row group {g} not found (file changed since it was opened?)")

    def scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        i = 0
        for g in range(len(self._chunk_rows)):
            for batch in self._file().iter_batches(batch_size=self._chunk_rows[g], row_groups=[g],
                                                   use_threads=False):
                for row in batch.to_pylist():
                    yield i, row
                    i += 1


class JsonLinesRows(RowFile):
    def __init__(self, path: Path):
        self.path = path
        offsets = array("q")  # 8 bytes per row; a Python list of ints would cost ~36
        with open(path, "rb") as f:
            at = 0
            for line in f:
                if line.strip():  # blank lines are not rows
                    offsets.append(at)
                at += len(line)
        self._offsets = np.frombuffer(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._offsets)

    def row(self, i: int) -> dict[str, Any]:
        i = self._check(i)
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[i]))
            return self._parse(i, f.readline())

    def _parse(self, i: int, line: bytes) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RowError(self.path, i, f"not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise RowError(self.path, i, f"a JSON {type(value).__name__}, not an object")
        return value

    def scan(self) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        with open(self.path, "rb") as f:
            i = 0
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield i, self._parse(i, line)
                except RowError as e:
                    yield i, e
                i += 1


class JsonArrayRows(RowFile):
    def __init__(self, path: Path):
        self.path = path
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("pairs"), list):
            data = data["pairs"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of objects (or {{\"pairs\": [...]}})")
        self._rows = data

    def __len__(self) -> int:
        return len(self._rows)

    def row(self, i: int) -> dict[str, Any]:
        value = self._rows[self._check(i)]
        if not isinstance(value, dict):
            raise RowError(self.path, i, f"a JSON {type(value).__name__}, not an object")
        return value
