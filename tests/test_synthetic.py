"""The procedural edit-preference generator: determinism, split hygiene, vocabulary, images and labels."""
import re
from collections import Counter

import numpy as np
import pytest

from jrm_engine.data.scenes import GRID, POSITIONS, SceneRenderer
from jrm_engine.data.synthetic import (
    GRADES, INSTRUCTION_TOKENS, OPERATIONS, SCORES, SyntheticEditDataset, heldout_combos, vocabulary,
)

N = 400
WORDS = re.compile(r"\w+|[^\w\s]")  # the tiny tokenizer's pre-tokenizer (jrm_engine/backbone.py): whitespace and punctuation


@pytest.fixture(scope="module")
def train():
    ds = SyntheticEditDataset(N, seed=3)
    return ds, [ds[i] for i in range(N)], [ds.describe(i) for i in range(N)]


def changed_cells(x: np.ndarray, y: np.ndarray) -> set[int]:
    edges = [k * x.shape[0] // GRID for k in range(GRID + 1)]
    boxes = [(slice(edges[r], edges[r + 1]), slice(edges[c], edges[c + 1])) for r in range(GRID) for c in range(GRID)]
    return {cell for cell, box in enumerate(boxes) if (x[box] != y[box]).any()}


def test_deterministic_per_index_and_seed():
    a, b = SyntheticEditDataset(50, seed=7), SyntheticEditDataset(500, seed=7)
    for i in (0, 13, 49):
        x, y = a[i], b[i]  # an item does not depend on the data set's length
        assert (x.instruction, x.a.explanation, x.b.explanation, x.preference) == \
               (y.instruction, y.a.explanation, y.b.explanation, y.preference)
        for u, v in ((x.source, y.source), (x.a.image, y.a.image), (x.b.image, y.b.image)):
            assert np.array_equal(u, v)
    other = SyntheticEditDataset(50, seed=8)
    assert [a[i].instruction for i in range(20)] != [other[i].instruction for i in range(20)]
    assert a[-1].id == a[49].id
    with pytest.raises(IndexError):
        a[50]


def test_heldout_combos_are_disjoint_from_training():
    held = heldout_combos()
    assert 16 <= len(held) <= 24  # about 1/6 of 4 ops x 8 colours x 4 shapes
    objects = Counter((c, s) for _, c, s in held)
    assert max(objects.values()) == 1  # each object held out under one operation only: seen under the others
    assert {op for op, _, _ in held} == set(OPERATIONS)
    for split, inside in (("train", False), ("heldout", True)):
        ds = SyntheticEditDataset(300, seed=1, split=split)
        ops = set()
        for i in range(len(ds)):
            info = ds.describe(i)
            ops.add(info.operation)
            assert ((info.operation, *info.subject) in held) == inside, (split, i, info)
        assert ops == set(OPERATIONS)
        pair = ds[0]
        assert " ".join(ds.describe(0).subject) in pair.instruction


def test_training_never_applies_a_heldout_operation_to_its_object():
    # Read back from the explanations, independently of the generator's bookkeeping.
    at = "at (?:" + "|".join(POSITIONS) + ")"
    events = {"recolour": rf"(\w+) (\w+) {at} became", "remove": rf"(\w+) (\w+) {at} removed",
              "add": r"(\w+) (\w+) added at", "move": rf"(\w+) (\w+) {at} moved"}
    held = heldout_combos()
    ds = SyntheticEditDataset(1500, seed=4, tie_rate=0.2)
    applied = Counter()
    for i in range(len(ds)):
        p = ds[i]
        for text in (p.a.explanation, p.b.explanation):
            for op, pattern in events.items():
                for colour, shape in re.findall(pattern, text):
                    assert (op, colour, shape) not in held, (p.id, text)
                    applied[op] += 1
    assert min(applied.values()) > 100, applied  # the patterns do match: every operation was seen applied


def test_every_emitted_token_is_in_the_vocabulary():
    vocab = set(vocabulary())
    seen = set()
    for split in ("train", "heldout"):
        ds = SyntheticEditDataset(300, seed=2, split=split, tie_rate=0.2)
        for i in range(len(ds)):
            p = ds[i]
            for text in (p.instruction, p.a.explanation, p.b.explanation):
                tokens = WORDS.findall(text)
                assert set(tokens) <= vocab, (p.id, text, set(tokens) - vocab)
                seen.update(tokens)
    assert len(vocab - seen) <= 2, vocab - seen  # no dead entries beyond rare ones (e.g. "empty")


def test_instructions_have_one_token_count():
    # The source and edited images then sit at one fixed M-RoPE distance (INSTRUCTION_TOKENS' comment).
    for split in ("train", "heldout"):
        ds = SyntheticEditDataset(200, seed=3, split=split)
        lengths = {len(WORDS.findall(ds[i].instruction)) for i in range(len(ds))}
        assert lengths == {INSTRUCTION_TOKENS}, (split, lengths)


def test_explanations_are_short_and_verdict_first(train):
    _, pairs, infos = train
    first_words = {k: set() for k in GRADES}
    for p, info in zip(pairs, infos):
        for cand, kind in zip((p.a, p.b), info.kinds):
            words = [t for t in WORDS.findall(cand.explanation) if t.isalnum()]
            assert 10 <= len(words) <= 30, cand.explanation
            first_words[kind].add(words[0])
            assert cand.scores == SCORES[kind]
        for cand, verdict in zip((p.a, p.b), info.verdicts):  # what describe() says, without rendering
            assert cand.explanation.startswith(f"{verdict} . ")
    assert first_words["correct"] == {"correct"} and first_words["no_change"] == {"unchanged"}
    assert first_words["wrong_object"] == first_words["wrong_attribute"] == {"wrong"}


@pytest.mark.parametrize("size", [84, 112])
def test_images_have_the_requested_size(size):
    p = SyntheticEditDataset(3, seed=0, image_size=size)[1]
    for img in (p.source, p.a.image, p.b.image):
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_size"):
        SceneRenderer(90)
    with pytest.raises(ValueError, match="split"):
        SyntheticEditDataset(3, split="test")
    with pytest.raises(ValueError, match="tie_rate"):
        SyntheticEditDataset(3, tie_rate=1.5)


def test_candidate_images_change_exactly_the_edited_cells(train):
    _, pairs, infos = train
    edit_cells = {"recolour": 1, "remove": 1, "add": 1, "move": 2}
    for p, info in zip(pairs, infos):
        for cand, kind in zip((p.a, p.b), info.kinds):
            n = len(changed_cells(p.source, cand.image))
            if kind == "no_change":
                assert np.array_equal(cand.image, p.source)
            elif kind == "correct":
                assert n == edit_cells[info.operation], (p.id, kind)
            elif kind in ("over_edit", "artefact"):
                assert n == edit_cells[info.operation] + 1, (p.id, kind)
            else:
                assert n >= 1, (p.id, kind)
        assert not np.array_equal(p.a.image, p.b.image)


def test_preferences_follow_grades_and_are_balanced(train):
    _, pairs, infos = train
    prefs = Counter(p.preference for p in pairs)
    assert prefs["tie"] == 0  # ties are off by default
    assert 0.4 < prefs["a"] / N < 0.6
    kinds = Counter(k for info in infos for k in info.kinds)
    assert set(kinds) == set(GRADES)
    assert 0.65 < kinds["correct"] / N < 0.85  # mostly correct vs flawed
    for p, info in zip(pairs, infos):
        p.validate()
        ga, gb = info.grades
        assert p.preference == ("a" if ga > gb else "b")
        better, worse = (p.a, p.b) if ga > gb else (p.b, p.a)
        assert better.scores["instruction_following"] >= worse.scores["instruction_following"]
        assert p.task_type == info.operation


def test_tie_rate_emits_equal_grade_pairs():
    ds = SyntheticEditDataset(300, seed=4, tie_rate=0.3)
    ties = 0
    for i in range(len(ds)):
        p, info = ds[i], ds.describe(i)
        if p.preference == "tie":
            ties += 1
            assert info.grades[0] == info.grades[1]
    assert 0.2 < ties / len(ds) < 0.4
