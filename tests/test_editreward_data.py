"""Training on EditReward-style records: both published schemas, paths and embedded bytes, splits, bad records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jrm_engine.config import DataConfig
from jrm_engine.data.editreward import corpus_words, heldout_ids, load_editreward, load_editreward_splits
from jrm_engine.data.sources import build_datasets
from jrm_engine.vision import load_image

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["editreward_data.jsonl", "editreward_data.parquet"])
def test_editreward_data_schema(name):
    pairs, report = load_editreward(FIXTURES / name)
    assert report.kept == report.total == 24 and not report.skipped
    p = pairs[0]
    assert (p.id, p.instruction, p.preference, p.task_type) == ("er-000", "make the square red", "a", "color")
    assert p.a.scores == {"instruction_following": 4.0, "visual_quality": 3.0, "overall": 7.0}
    assert p.a.explanation == "correct . the square became red ."
    assert pairs[1].a.explanation is None and pairs[1].preference == "b"  # ranking loss only
    assert pairs[7].preference == "tie"
    assert load_image(p.source, 28).shape == (28, 28, 3)


def test_paths_and_bytes_give_the_same_pixels():
    from_paths, _ = load_editreward(FIXTURES / "editreward_data.jsonl")
    from_bytes, _ = load_editreward(FIXTURES / "editreward_data.parquet")
    for a, b in zip(from_paths[:4], from_bytes[:4]):
        assert (load_image(a.b.image, 28) == load_image(b.b.image, 28)).all()


def test_editreward_training_json():
    pairs, _ = load_editreward(FIXTURES / "editreward_train.json")
    assert [p.preference for p in pairs] == ["a", "a", "tie"]  # path1 is preferred; tie_case marks ties
    assert pairs[0].b.scores == {"instruction_following": 2.0, "visual_quality": 3.0, "overall": 5.0}
    assert pairs[0].id == "editreward_train.json:0"


def test_splits_deterministic_capped_and_ties_dropped(capsys):
    cfg = DataConfig(source="editreward", path=str(FIXTURES / "editreward_data.jsonl"), n_heldout=16)
    train, held = build_datasets(cfg, image_size=56)
    # 24 records - 3 ties (data.ties=drop) = 21; held out min(16, int(21 * 0.10)) = 2
    assert len(held) == 2 and len(train) == 19
    assert "left out 3 tie records" in capsys.readouterr().out
    assert not {p.id for p in held} & {p.id for p in train}
    again = load_editreward_splits(cfg)[1]
    assert [p.id for p in again] == [p.id for p in held]
    assert heldout_ids([f"r{i}" for i in range(100)], 5, seed=0) != heldout_ids([f"r{i}" for i in range(100)], 5,
                                                                               seed=1)
    cfg.ties = "tie_term"
    train, held = load_editreward_splits(cfg)
    assert len(train) + len(held) == 24


def test_corpus_words_cover_instructions_and_explanations():
    words = corpus_words(DataConfig(source="editreward", path=str(FIXTURES / "editreward_data.jsonl")))
    assert {"make", "square", "red", ".", "correct", "became", "wrong", "object"} <= set(words)


def bad_copy(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    rows = [json.loads(line) for line in (FIXTURES / "editreward_data.jsonl").read_text().splitlines()]
    rows[3]["left_image"] = "images/gone.png"
    rows[5]["instruction"] = ""
    rows[6]["vote_type"] = "maybe"
    rows[8]["left_instruction_following_score"] = float("nan")
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_record_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"record 'er-003'.*gone\.png not found.*skip_bad"):
        load_editreward(bad_copy(tmp_path))


def test_skip_bad_reports_counts(tmp_path, capsys):
    pairs, report = load_editreward(bad_copy(tmp_path), skip_bad=True)
    assert len(pairs) == 20 and report.total == 24
    assert report.skipped == {"missing image": 1, "empty instruction": 1, "bad label": 1, "bad score": 1}
    out = capsys.readouterr().out
    assert "20 of 24 records kept" in out and "er-006" in out


def test_duplicate_ids_are_bad(tmp_path):
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    line = (FIXTURES / "editreward_data.jsonl").read_text().splitlines()[0]
    (tmp_path / "dup.jsonl").write_text(line + "\n" + line + "\n")
    with pytest.raises(ValueError, match="er-000.*more than once"):
        load_editreward(tmp_path / "dup.jsonl")


def test_dataset_reads_rows_on_access_and_indexes_like_a_list(tmp_path, monkeypatch):
    """Rows are read when accessed, from small chunks of small row groups; views share the file; the dataset
    pickles without its open file (a worker process reopens it)."""
    import pickle

    import pyarrow.parquet as pq

    from jrm_engine.data.rows import ParquetRows

    path = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(FIXTURES / "editreward_data.parquet"), path, row_group_size=5)  # 5 row groups
    pairs, _ = load_editreward(path)
    eager, _ = load_editreward(FIXTURES / "editreward_data.jsonl")
    assert isinstance(pairs.rows, ParquetRows) and len(pairs) == 24
    assert [p.id for p in pairs] == [p.id for p in eager] and pairs[-1].id == "er-023"
    assert [p.id for p in pairs[3:9:2]] == ["er-003", "er-005", "er-007"]
    reads = []
    iter_batches = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, **kw: reads.append(kw["row_groups"]) or iter_batches(self, **kw))
    assert pairs[17].id == "er-017" and pairs[16].id == "er-016"  # one row group read, then cached
    assert reads == [[3]] and len(pairs.rows._cache) <= 2
    with pytest.raises(IndexError, match="record 24 out of range"):
        pairs[24]
    clone = pickle.loads(pickle.dumps(pairs[10:12]))
    assert clone.rows._pf is None and [p.id for p in clone] == ["er-010", "er-011"]


def test_parquet_chunks_hold_a_bounded_number_of_rows(tmp_path):
    """A huge row group is read in chunks of about chunk_bytes, not whole."""
    import pyarrow.parquet as pq

    from jrm_engine.data.rows import open_rows

    path = tmp_path / "one_group.parquet"
    pq.write_table(pq.read_table(FIXTURES / "editreward_data.parquet"), path)  # one row group of 24 rows
    rows = open_rows(path, chunk_bytes=1500)  # a few rows' worth
    assert rows._chunk_rows[0] < 24
    assert rows.row(23)["dev_id"] == "er-023" and rows.row(0)["dev_id"] == "er-000"
    assert all(batch.num_rows <= rows._chunk_rows[0] for batch in rows._cache.values())
    assert [i for i, _ in rows.scan()] == list(range(24))


def test_splits_are_views_of_one_file_and_match_heldout_ids():
    cfg = DataConfig(source="editreward", path=str(FIXTURES / "editreward_data.parquet"), n_heldout=16,
                     ties="tie_term", seed=3)
    train, held = load_editreward_splits(cfg)
    assert train.rows is held.rows  # one reader, one index
    all_ids = [p.id for p in load_editreward(FIXTURES / "editreward_data.parquet")[0]]
    assert {p.id for p in held} == heldout_ids(all_ids, 16, seed=3) and len(held) == 2
