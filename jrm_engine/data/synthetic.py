"""Procedural image-editing preferences: the built-in data set, so the whole pipeline trains without downloads.

Each pair is one source scene (2-3 flat shapes on a 3 x 3 grid), one instruction (recolour / remove / add / move)
and two candidate edits of graded quality:

    kind             grade  what the candidate image shows
    correct            3    exactly the requested edit
    over_edit          2    the requested edit plus an unintended change to another object
    artefact           2    the requested edit plus a noise blotch
    wrong_object       1    the requested change applied to another object
    wrong_attribute    1    the right object, but wrong colour / shape / place / direction / action
    no_change          0    the source, untouched

The better grade is preferred; equal grades are a tie (emitted only at `tie_rate`). Every candidate carries an
explanation whose first word is its verdict, because with causal attention the first explanation token is predicted
at the `<reward>` position: the LM loss on it trains exactly the state the reward head reads. The verdict is followed
by what changed and an inventory of the edited image (listing objects made perception learnable in a probe).

Items are generated lazily and deterministically from (seed, split, index). The held-out split uses only the
(operation, colour, shape) instruction subjects in `heldout_combos()`; the train split never applies one of those
operations to its object, in any candidate.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from .records import Candidate, PreferencePair
from .scenes import COLOURS, DIRECTIONS, POSITIONS, SHAPES, Obj, Scene, SceneRenderer, neighbour

OPERATIONS = ("recolour", "remove", "add", "move")
SPLITS = ("train", "heldout")
GRADES = {"correct": 3, "over_edit": 2, "artefact": 2, "wrong_object": 1, "wrong_attribute": 1, "no_change": 0}
FLAWS = tuple(k for k in GRADES if k != "correct")
# Instruction following drops with the grade; only artefacts hurt visual quality, and an over-edit a little.
SCORES = {
    "correct": {"instruction_following": 4, "visual_quality": 4},
    "over_edit": {"instruction_following": 3, "visual_quality": 3},
    "artefact": {"instruction_following": 4, "visual_quality": 2},
    "wrong_object": {"instruction_following": 2, "visual_quality": 4},
    "wrong_attribute": {"instruction_following": 2, "visual_quality": 4},
    "no_change": {"instruction_following": 1, "visual_quality": 4},
}
_VERDICTS = {"correct": "correct", "over_edit": "overdone", "artefact": "noisy", "wrong_object": "wrong object",
             "no_change": "unchanged"}  # wrong_attribute: "wrong <detail>"
_WRONG_DETAILS = ("colour", "shape", "place", "direction", "action")
# Every instruction is INSTRUCTION_TOKENS words long. This was chosen when the instruction sat between the images,
# where a fixed length put a cell of the source and the same cell of the edit at one fixed rotary distance (now the
# images are adjacent, so the distance is fixed anyway). The fixed-length wording also trained the explanations
# best (benchmarks/NOTES-cpu-training.md, run e2), and every measurement since used it, so it stays.
INSTRUCTION_TOKENS = 8
_HELDOUT_PER_OPERATION = 5  # 20 of the 128 (operation, colour, shape) subjects: about 1/6


def heldout_combos() -> frozenset[tuple[str, str, str]]:
    """The (operation, colour, shape) instruction subjects reserved for the held-out split.

    Fixed (independent of the data seed) so any train / held-out pair of data sets agrees. Built so that each
    (colour, shape) is held out under at most one operation and each operation holds out distinct colours: every
    held-out subject's object, colour and shape all occur in training under other operations.
    """
    colours, combos = list(COLOURS), set()
    for k, op in enumerate(OPERATIONS):
        for j in range(_HELDOUT_PER_OPERATION):
            idx = k * _HELDOUT_PER_OPERATION + j
            combos.add((op, colours[idx % len(colours)], SHAPES[(idx + idx // len(colours)) % len(SHAPES)]))
    return frozenset(combos)


def vocabulary() -> list[str]:
    """Every word and punctuation token the generator emits (instructions and explanations), sorted.

    Text is lower case with punctuation as separate tokens, so splitting on whitespace and punctuation recovers
    exactly these entries.
    """
    words = {".", ",", ":", "change", "into", "one", "the", "remove", "keep", "rest", "add", "a", "an", "at",
             "move", "by", "cell", "became", "added", "removed", "moved", "and", "noise", "nothing", "changed",
             "now", "empty", *_WRONG_DETAILS, *COLOURS, *SHAPES, *DIRECTIONS}
    for phrase in (*POSITIONS, *_VERDICTS.values()):
        words.update(phrase.split())
    return sorted(words)


@dataclass(frozen=True)
class PairInfo:
    """What a pair was built from, for per-kind evaluation and tests."""

    operation: str
    subject: Obj  # (colour, shape) named by the instruction
    kinds: tuple[str, str]  # kind of candidate a, b
    grades: tuple[int, int]
    verdicts: tuple[str, str]  # first words of each explanation: the kind, with the detail of a wrong attribute


@dataclass
class _Edit:
    scene: Scene
    events: list[str] = field(default_factory=list)
    applied: list[tuple[str, Obj]] = field(default_factory=list)  # (operation, object it was applied to)
    noise: dict[int, int] = field(default_factory=dict)
    verdict: str = ""


# Edit primitives: change `edit.scene` in place, record the explanation phrase and what was applied to which object.
def _recolour(edit: _Edit, cell: int, colour: str, shape: str | None = None) -> None:
    old_colour, old_shape = edit.scene[cell]
    new_shape = shape or old_shape
    edit.scene[cell] = (colour, new_shape)
    became = colour if new_shape == old_shape else f"{colour} {new_shape}"
    edit.events.append(f"{old_colour} {old_shape} at {POSITIONS[cell]} became {became}")
    edit.applied.append(("recolour", (old_colour, old_shape)))


def _remove(edit: _Edit, cell: int) -> None:
    colour, shape = edit.scene.pop(cell)
    edit.events.append(f"{colour} {shape} at {POSITIONS[cell]} removed")
    edit.applied.append(("remove", (colour, shape)))


def _add(edit: _Edit, cell: int, obj: Obj) -> None:
    edit.scene[cell] = obj
    edit.events.append(f"{obj[0]} {obj[1]} added at {POSITIONS[cell]}")
    edit.applied.append(("add", obj))


def _move(edit: _Edit, cell: int, direction: str) -> None:
    obj = edit.scene.pop(cell)
    edit.scene[neighbour(cell, direction)] = obj
    # Naming the cell it left teaches where the object was in the source; the edited image's inventory says where
    # it is now. Without it, "move" was learnt by one training seed of three, with it by three of four
    # (benchmarks/NOTES-cpu-training.md).
    edit.events.append(f"{obj[0]} {obj[1]} at {POSITIONS[cell]} moved {direction}")
    edit.applied.append(("move", obj))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _free_moves(scene: Scene, cell: int) -> list[str]:
    """Directions in which the object at `cell` can move one step into an empty cell."""
    return [d for d in DIRECTIONS if (n := neighbour(cell, d)) is not None and n not in scene]


class _Task:
    """One source scene and instruction; builds a candidate edit of each kind (None when a kind is impossible)."""

    def __init__(self, rng: random.Random, operation: str, subject: Obj,
                 forbidden: frozenset[tuple[str, str, str]] = frozenset()):
        self.rng, self.op, self.subject, self.forbidden = rng, operation, subject, forbidden
        cells = list(range(len(POSITIONS)))
        rng.shuffle(cells)
        others = [c for c in COLOURS if c != subject[0]]
        rng.shuffle(others)
        self.scene: Scene = {}
        if operation == "add":  # two objects already there; the target cell and the added colour are new
            self.cell = cells.pop()
            n_others = 2
        else:
            self.cell = cells.pop()
            self.scene[self.cell] = subject
            n_others = rng.choice((1, 2))
        if operation == "move":
            self.direction = rng.choice([d for d in DIRECTIONS if neighbour(self.cell, d) is not None])
            cells.remove(neighbour(self.cell, self.direction))
        for _ in range(n_others):
            self.scene[cells.pop()] = (others.pop(), rng.choice(SHAPES))
        # Colours absent from the scene: targets of recolouring stay unique, so "became blue" is unambiguous.
        self.unused = others
        if operation == "recolour":
            self.target = self.unused.pop()

    def instruction(self) -> str:
        colour, shape = self.subject
        if self.op == "recolour":
            return f"change the {colour} {shape} into {_article(self.target)} {self.target} one"
        if self.op == "remove":
            return f"remove the {colour} {shape} and keep the rest"
        if self.op == "add":
            return f"add {_article(colour)} {colour} {shape} at the {POSITIONS[self.cell]}"
        return f"move the {colour} {shape} by one cell {self.direction}"

    def _apply_correct(self, edit: _Edit) -> None:
        if self.op == "recolour":
            _recolour(edit, self.cell, self.target)
        elif self.op == "remove":
            _remove(edit, self.cell)
        elif self.op == "add":
            _add(edit, self.cell, self.subject)
        else:
            _move(edit, self.cell, self.direction)

    def _touched(self) -> set[int]:
        if self.op == "move":
            return {self.cell, neighbour(self.cell, self.direction)}
        return {self.cell}

    def build(self, kind: str, renderer: SceneRenderer) -> _Edit | None:
        rng, edit = self.rng, _Edit(scene=dict(self.scene))
        if kind == "no_change":
            pass
        elif kind in ("correct", "over_edit", "artefact"):
            self._apply_correct(edit)
            if kind == "over_edit":
                options = [(cell, op) for cell in sorted(set(edit.scene) - self._touched())
                           for op in ("remove", "recolour") if self.allowed(op, edit.scene[cell])]
                if not options:
                    return None
                victim, op = rng.choice(options)
                if op == "remove":
                    _remove(edit, victim)
                else:
                    _recolour(edit, victim, rng.choice(self.unused))
            elif kind == "artefact":
                # Away from the edited cells, so the blotch never hides or mimics the edit itself.
                cell = rng.choice([c for c in range(len(POSITIONS))
                                   if c not in edit.scene and c not in self.scene and c not in self._touched()])
                edit.noise[cell] = rng.randrange(renderer.num_noise_tiles)
                edit.events.append(f"noise at {POSITIONS[cell]}")
        elif kind == "wrong_object":
            if not self._wrong_object(edit):
                return None
        elif kind == "wrong_attribute":
            detail = self._wrong_attribute(edit)
            if detail is None:
                return None
            edit.verdict = f"wrong {detail}"
        else:
            raise ValueError(f"unknown candidate kind {kind!r}; known: {tuple(GRADES)}")
        edit.verdict = edit.verdict or _VERDICTS[kind]
        return edit

    def allowed(self, op: str, obj: Obj) -> bool:
        return (op, *obj) not in self.forbidden

    def _wrong_object(self, edit: _Edit) -> bool:
        """The instructed change, applied to another object."""
        others = sorted(c for c in edit.scene if c != self.cell and self.allowed(self.op, edit.scene[c]))
        if not others:
            return False
        if self.op == "recolour":
            _recolour(edit, self.rng.choice(others), self.target)
        elif self.op == "remove":
            _remove(edit, self.rng.choice(others))
        elif self.op == "move":
            movable = [c for c in others if self.direction in _free_moves(edit.scene, c)]
            if not movable:
                return False
            _move(edit, self.rng.choice(movable), self.direction)
        else:  # "add" has no other object to apply itself to
            return False
        return True

    def _wrong_attribute(self, edit: _Edit) -> str | None:
        """The right object, done wrong; returns the detail named in the verdict."""
        rng, (colour, shape) = self.rng, self.subject
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        if self.op == "recolour":
            if rng.random() < 0.5:
                _recolour(edit, self.cell, rng.choice(self.unused))
                return "colour"
            _recolour(edit, self.cell, self.target, other_shape)
            return "shape"
        if self.op == "add":
            detail = rng.choice(("colour", "shape", "place"))
            if detail == "colour":
                _add(edit, self.cell, (rng.choice(self.unused), shape))
            elif detail == "shape":
                _add(edit, self.cell, (colour, other_shape))
            else:
                empty = [c for c in range(len(POSITIONS)) if c not in edit.scene and c != self.cell]
                _add(edit, rng.choice(empty), self.subject)
            return detail
        if self.op == "remove":  # recoloured or moved instead of removed
            moves = _free_moves(edit.scene, self.cell)
            if moves and rng.random() < 0.5:
                _move(edit, self.cell, rng.choice(moves))
            else:
                _recolour(edit, self.cell, rng.choice(self.unused))
            return "action"
        moves = [d for d in _free_moves(edit.scene, self.cell) if d != self.direction]
        if not moves:
            return None
        _move(edit, self.cell, rng.choice(moves))
        return "direction"


def _explanation(edit: _Edit) -> str:
    """'<verdict> . <what changed> . now : <objects of the edited image> .' (10-30 words)."""
    changes = " and ".join(edit.events) or "nothing changed"
    inventory = " , ".join(f"{c} {s} {POSITIONS[cell]}" for cell, (c, s) in sorted(edit.scene.items()))
    return f"{edit.verdict} . {changes} . now : {inventory or 'empty'} ."


class SyntheticEditDataset(Sequence):
    """`n` procedural preference pairs; item i is a deterministic function of (seed, split, i).

    tie_rate: fraction of pairs whose candidates have equal grades (preference "tie"); 0 keeps ties out.
    flawed_pair_rate: fraction of the other pairs that compare two flawed candidates of different grades instead
    of the correct edit against a flawed one.
    """

    def __init__(self, n: int, seed: int = 0, image_size: int = 84, split: str = "train", *,
                 tie_rate: float = 0.0, flawed_pair_rate: float = 0.25):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, rate in (("tie_rate", tie_rate), ("flawed_pair_rate", flawed_pair_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
        self.n, self.seed, self.split = n, seed, split
        self.tie_rate, self.flawed_pair_rate = tie_rate, flawed_pair_rate
        self.renderer = SceneRenderer(image_size)
        self.image_size = image_size
        held = heldout_combos()
        # In training, a held-out (operation, colour, shape) is never applied in any role, not even by a flawed
        # candidate: were it applied only by wrong-object and over-edits, training would teach "applying this
        # operation to this object is always a mistake", the opposite of what the held-out pairs ask.
        self._forbidden = held if split == "train" else frozenset()
        self._subjects = {
            op: [(c, s) for c in COLOURS for s in SHAPES if ((op, c, s) in held) == (split == "heldout")]
            for op in OPERATIONS
        }

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> PreferencePair:
        return self._generate(self._index(i), render=True)[0]

    def describe(self, i: int) -> PairInfo:
        """Operation, subject and candidate kinds of item i, without drawing its images."""
        return self._generate(self._index(i), render=False)[1]

    def _index(self, i: int) -> int:
        if not isinstance(i, int):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} pairs")
        return i

    def _choose_kinds(self, rng: random.Random, available: list[str]) -> tuple[str, str]:
        flawed = [k for k in available if k != "correct"]
        if rng.random() < self.tie_rate:
            ties = [p for p in combinations(flawed, 2) if GRADES[p[0]] == GRADES[p[1]]]
            return rng.choice(ties)  # over_edit and artefact are always possible
        if rng.random() < self.flawed_pair_rate:
            return rng.choice([p for p in combinations(flawed, 2) if GRADES[p[0]] != GRADES[p[1]]])
        return "correct", rng.choice(flawed)

    def _generate(self, i: int, render: bool) -> tuple[PreferencePair | None, PairInfo]:
        # A string seed is hashed with SHA-512 by `random`: stable across runs and Python versions.
        rng = random.Random(f"jrm-synthetic/{self.seed}/{self.split}/{i}")
        op = rng.choice(OPERATIONS)
        subject = rng.choice(self._subjects[op])
        task = _Task(rng, op, subject, self._forbidden)
        edits = {kind: task.build(kind, self.renderer) for kind in GRADES}
        # The few flawed edits the choices above cannot steer (a wrong attribute's by-product) are left out.
        edits = {kind: None if e is None or not all(task.allowed(*a) for a in e.applied) else e
                 for kind, e in edits.items()}
        kinds = self._choose_kinds(rng, [k for k, e in edits.items() if e is not None])
        if rng.random() < 0.5:
            kinds = kinds[::-1]
        grades = (GRADES[kinds[0]], GRADES[kinds[1]])
        info = PairInfo(operation=op, subject=subject, kinds=kinds, grades=grades,
                        verdicts=(edits[kinds[0]].verdict, edits[kinds[1]].verdict))
        if not render:
            return None, info
        a, b = (Candidate(image=self.renderer.render(edits[k].scene, edits[k].noise),
                          explanation=_explanation(edits[k]), scores=dict(SCORES[k])) for k in kinds)
        preference = "a" if grades[0] > grades[1] else "b" if grades[0] < grades[1] else "tie"
        pair = PreferencePair(id=f"synthetic-{self.split}-{self.seed}-{i}", source=self.renderer.render(task.scene),
                              instruction=task.instruction(), a=a, b=b, preference=preference, task_type=op)
        return pair, info
