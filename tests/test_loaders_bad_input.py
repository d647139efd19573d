"""Bad input to the EditReward-style loaders: every bad row gets an error naming the file, the row and the record,
or with skip_bad a skip counted by reason; bad files get an error naming the file; random rows never escape as
anything but a BadRecord."""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jrm_engine.data.editreward import BadRecord, load_editreward, row_to_pair

FIXTURES = Path(__file__).parent / "fixtures"


def png(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def good_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "editreward_data.jsonl").read_text().splitlines()]


@pytest.fixture
def folder(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / "bomb.png").write_bytes(png((9000, 9000), "1"))  # 81 Mpixel header, ~10 KB
    return tmp_path


# (what is wrong, how to break row 3 of the fixture, the reason skip_bad counts, the error's words)
ROW_CASES = [
    ("no instruction", lambda r: r.pop("instruction"), "empty instruction", "empty instruction"),
    ("instruction is a number", lambda r: r.update(instruction=5), "bad type", "instruction has type int, expected a string"),
    ("explanation is a list", lambda r: r.update(left_explanation=["a"]), "bad type", "left explanation has type list"),
    ("no vote", lambda r: r.pop("vote_type"), "bad label", "no vote_type"),
    ("vote is a number", lambda r: r.update(vote_type=1), "bad label", "preference 1 is not one of"),
    ("score is a string", lambda r: r.update(left_overall_score="7"), "bad score", "'7' is not a finite number"),
    ("score is infinite", lambda r: r.update(right_overall_score=float("inf")), "bad score", "inf is not a finite"),
    ("score is a bool", lambda r: r.update(left_overall_score=True), "bad score", "True is not a finite number"),
    ("no source image", lambda r: r.pop("source_image"), "missing image", "no source image"),
    ("image path is a number", lambda r: r.update(left_image=12), "bad type", "left edit has type int, expected a path"),
    ("broken image path", lambda r: r.update(right_image="images/gone.png"), "missing image", r"gone\.png not found"),
    ("image path is not an image", lambda r: r.update(right_image="images/notes.txt"), "bad image",
     "not a format PIL can identify"),
    ("image path is a folder", lambda r: r.update(right_image="images"), "missing image", "not found"),
    ("broken image bytes", lambda r: r.update(left_image={"bytes": base64.b64encode(b"\x89PNG junk").decode()}),
     "bad image", "cannot read image"),
    ("bytes neither raw nor base64", lambda r: r.update(left_image={"bytes": "%%%"}), "bad image", "(neither raw nor|cannot read image)"),
    ("empty image struct", lambda r: r.update(left_image={"bytes": None, "path": None}), "missing image", "no left"),
    ("decompression bomb", lambda r: r.update(source_image="images/bomb.png"), "bad image",
     "81000000 pixels exceeds the limit"),
    ("duplicate id", lambda r: r.update(dev_id="er-000"), "duplicate id", r"more than once .*first at row 0"),
]


def write(folder: Path, rows: list, kind: str) -> Path:
    """kind: jsonl, parquet (image paths) or parquet-bytes (images embedded as Hugging Face Image structs)."""
    path = folder / ("data.jsonl" if kind == "jsonl" else "data.parquet")
    if kind == "jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path
    if kind == "parquet-bytes":
        embed = lambda v: ({"bytes": (folder / v).read_bytes(), "path": v}
                           if isinstance(v, str) and (folder / v).is_file() else v)
        rows = [{k: embed(v) if k.endswith("_image") else v for k, v in r.items()} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5)  # several row groups
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "parquet-bytes"])
def test_each_bad_row_names_file_row_and_record(folder, kind):
    tried = 0
    for what, corrupt, reason, words in ROW_CASES:
        rows = good_rows()
        corrupt(rows[3])
        try:
            path = write(folder, rows, kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            assert kind != "jsonl"  # a parquet column has one type: a string cell cannot sit among numbers
            continue
        tried += 1
        with pytest.raises(ValueError, match=rf"{path.name} row 3: record '.*': .*{words}.*skip_bad"):
            load_editreward(path)
        pairs, report = load_editreward(path, skip_bad=True, quiet=True)
        assert report.skipped == {reason: 1} and report.kept == len(pairs) == 23, what
        assert report.total == 24
    assert tried >= (len(ROW_CASES) if kind == "jsonl" else 8)


def test_skip_bad_counts_every_reason_once(folder, capsys):
    rows = good_rows()
    for k, (_, corrupt, _, _) in enumerate(ROW_CASES):
        corrupt(rows[k + 1])  # row 0 stays good: the duplicate-id case repeats its id
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]", "", "   "]  # blank lines are not rows
    pairs, report = load_editreward(write(folder, lines, "jsonl"), skip_bad=True)
    reasons = {}
    for _, _, reason, _ in ROW_CASES:
        reasons[reason] = reasons.get(reason, 0) + 1
    reasons["bad row"] = 2
    assert report.skipped == reasons and report.total == 26 and report.kept == len(pairs) == 24 - len(ROW_CASES)
    assert "bad row" in capsys.readouterr().out
    assert all(p.id not in {"er-001", "er-002"} for p in pairs)


def test_row_that_is_not_an_object(folder):
    path = write(folder, [json.dumps(good_rows()[0]), "[1, 2]"], "jsonl")
    with pytest.raises(ValueError, match=r"data\.jsonl row 1: record 'data\.jsonl:1': a JSON list, not an object"):
        load_editreward(path)
    path = write(folder, [json.dumps(good_rows()[0]), '{"instruction": "x", '], "jsonl")
    with pytest.raises(ValueError, match=r"data\.jsonl row 1: .*not valid JSON"):
        load_editreward(path)
    (folder / "array.json").write_text(json.dumps([good_rows()[0], 7]))
    with pytest.raises(ValueError, match=r"array\.json row 1: .*a JSON int, not an object"):
        load_editreward(folder / "array.json")


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", r"empty\.jsonl: the file holds no records"),
    ("blank.jsonl", b"\n \n", r"blank\.jsonl: the file holds no records"),
    ("empty.json", b"[]", r"empty\.json: the file holds no records"),
    ("empty.parquet", b"", r"empty\.parquet: cannot read parquet"),
    ("junk.parquet", b"PAR1 this is not parquet PAR1", r"junk\.parquet: cannot read parquet"),
    ("object.json", b'{"rows": []}', r"object\.json: expected a JSON array"),
    ("broken.json", b'[{"a": 1}', r"broken\.json: not valid JSON"),
    ("data.csv", b"a,b\n1,2\n", r"data\.csv: unsupported data file type '\.csv'"),
])
def test_bad_files_name_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_editreward(tmp_path / name)


def test_parquet_with_no_rows_and_missing_file(tmp_path):
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(ValueError, match=r"none\.parquet: the file holds no records"):
        load_editreward(tmp_path / "none.parquet")
    with pytest.raises(FileNotFoundError, match=r"gone\.parquet not found"):
        load_editreward(tmp_path / "gone.parquet")


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                       | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(["bytes", "path", "x"]), inner, max_size=2), max_leaves=4)
FIELDS = ["id", "dev_id", "instruction", "prompt", "source_image", "left_image", "right_image", "path_src", "path1",
          "path2", "vote_type", "tie_case", "left_explanation", "explanation1", "left_overall_score",
          "model1_dim1_score", "category"]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSONISH | st.sampled_from(["images/train_0.png", "leftvote", "tie"]),
                       max_size=len(FIELDS)))
def test_random_rows_are_a_pair_or_a_bad_record(row):
    try:
        pair = row_to_pair(row, 0, FIXTURES, "fuzz.jsonl")
    except BadRecord as bad:
        assert str(bad).startswith("record ") and bad.reason
        return
    assert pair.instruction.strip() and pair.preference in ("a", "b", "tie")
