"""Each benchmark's metric, computed from one score per candidate exactly as the benchmark's own scripts do.

- `editreward-bench` (EditScore's `calculate_statistics.py`): a pair is right iff score(preferred) > score(rejected),
  strictly (equal scores are wrong). Accuracy per task type, then the unweighted mean over the task types present,
  separately per dimension (prompt_following, consistency, overall).
- `editreward-bench-tiger` (TIGER-Lab's `eval_bench.py`, the path it uses for scalar reward models): for every pair
  i < j of a group, the human label h is +1 / -1 / 0 (tie) and the model's margin is m = s_i - s_j.
  * K = 2 ("accuracy with ties", tie calibration after Deutsch et al. 2023): the model predicts a tie iff
    |m| <= eps; accuracy = (concordant + both-tie) / all pairs, maximised over eps in {0} and every |m| (the smallest
    best eps wins). This is how a scalar model, which never outputs "A=B" itself, is judged on ties.
  * K = 3, 4 ("accuracy without ties"): concordant / (concordant + discordant); a zero margin is discordant and
    human-tie pairs are left out of the denominator.
  * overall pairwise: the K = 2 rule (with a fresh eps) on all pairs pooled.
  * group accuracy: a group is right iff every pair is right: a strict human pair needs sign(m) = h with m != 0
    (TIGER-Lab compare the arg-sorted order, which breaks exact score ties by index; we count a tie as wrong), a
    human tie needs |m| <= eps of the K = 2 calibration. Overall group accuracy pools all groups.
- `mmrb2-edit` (MMRB2's `compute_accuracy.py`): a pair is right iff score(chosen) > score(other) strictly. A
  scalar model's forward and swapped judgements agree, so each pair counts once. Accuracy per subset, and overall
  = (n_single * acc_single + n_multi * acc_multi) / (n_single + n_multi), i.e. (822 s + 178 m) / 1000 on the release.
- `synthetic`: strict pairwise accuracy per operation, overall (pooled) and the mean over operations.

`score(key, dimension)` returns the candidate's score; a scalar model returns the same score for every dimension.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from .benchmarks import GroupItem, PairItem

ScoreFn = Callable[[str, "str | None"], float]

# EditScore's task types in the column order of its table; unknown task types follow, sorted.
EDITSCORE_TASK_TYPES = ("background_change", "color_alter", "style_change", "subject-add", "subject-remove",
                        "subject-replace", "material_alter", "motion_change", "ps_human", "text_change",
                        "tone_transfer", "extract", "compose")
EDITSCORE_DIMENSIONS = ("prompt_following", "consistency", "overall")


@dataclass
class MetricResult:
    """What the report needs: the numbers (JSON), bars for the plot, and pair margins for the histogram."""

    metrics: dict
    bars: dict[str, dict[str, float | None]]  # series -> category -> accuracy
    lines: dict[str, float | None]  # series -> overall value, drawn as a horizontal line
    margins: np.ndarray = field(default_factory=lambda: np.zeros(0))  # score(better) - score(worse)
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _acc(correct: int, total: int) -> float | None:
    return correct / total if total else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ordered(names, canonical=()) -> list[str]:
    names = set(names)
    return [n for n in canonical if n in names] + sorted(names - set(canonical))


def _strict_pairs(items: list[PairItem], score: ScoreFn) -> tuple[np.ndarray, np.ndarray]:
    margins = np.array([score(it.keys[0], it.dimension) - score(it.keys[1], it.dimension) for it in items],
                       dtype=np.float64)
    return margins, margins > 0


def editscore_metrics(items: list[PairItem], score: ScoreFn) -> MetricResult:
    margins, correct = _strict_pairs(items, score)
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for it, ok in zip(items, correct):
        cell = counts[it.dimension][it.category]
        cell[0] += int(ok)
        cell[1] += 1
    dims, bars, lines = {}, {}, {}
    for dim in _ordered(counts, EDITSCORE_DIMENSIONS):
        per_task = {t: {"accuracy": _acc(*counts[dim][t]), "correct": counts[dim][t][0], "total": counts[dim][t][1]}
                    for t in _ordered(counts[dim], EDITSCORE_TASK_TYPES)}
        macro = _mean(v["accuracy"] for v in per_task.values())
        dims[dim] = {"per_task_type": per_task, "macro_average": macro,
                     "pairs": sum(v["total"] for v in per_task.values()), "task_types": len(per_task)}
        bars[dim] = {t: v["accuracy"] for t, v in per_task.items()}
        lines[dim] = macro
    return MetricResult({"dimensions": dims, "headline": {d: v["macro_average"] for d, v in dims.items()}},
                        bars, lines, margins, correct)


def suff_stats(h: np.ndarray, m: np.ndarray, eps: float) -> tuple[int, int, int, int, int]:
    """(C, D, Th, Tm, Thm): concordant, discordant, human-only tie, model-only tie, both tie (model tie: |m|<=eps)."""
    model_tie = np.abs(m) <= eps
    human_tie = h == 0
    both = int(np.sum(human_tie & model_tie))
    th = int(np.sum(human_tie & ~model_tie))
    tm = int(np.sum(~human_tie & model_tie))
    strict = ~human_tie & ~model_tie
    c = int(np.sum(strict & (h * m > 0)))
    d = int(np.sum(strict)) - c
    return c, d, th, tm, both


def accuracy_with_ties(h: np.ndarray, m: np.ndarray) -> tuple[float | None, float]:
    """Tie-calibrated accuracy and its eps: max over eps in {0} + sorted unique |m| of (C + Thm) / N."""
    if len(h) == 0:
        return None, 0.0
    best, best_eps = -1.0, 0.0
    for eps in [0.0, *np.unique(np.abs(m))]:
        c, d, th, tm, both = suff_stats(h, m, float(eps))
        acc = (c + both) / len(h)
        if acc > best:  # strict: the smallest eps reaching the maximum wins
            best, best_eps = acc, float(eps)
    return best, best_eps


def accuracy_without_ties(h: np.ndarray, m: np.ndarray) -> float | None:
    """C / (C + D + Tm) with no model ties (eps = -1): zero margins are discordant, human ties are left out."""
    c, d, _, tm, _ = suff_stats(h, m, -1.0)
    return _acc(c, c + d + tm)


def _group_pairs(group: GroupItem, score: ScoreFn) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(combinations(range(group.k), 2))
    s = [score(key, None) for key in group.keys]
    return (np.array([group.labels[p] for p in pairs], dtype=np.int64),
            np.array([s[i] - s[j] for i, j in pairs], dtype=np.float64))


def tiger_metrics(groups: list[GroupItem], score: ScoreFn) -> MetricResult:
    per_k: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for g in groups:
        per_k[g.k].append(_group_pairs(g, score))
    eps_k2 = 0.0
    if 2 in per_k:
        h2 = np.concatenate([h for h, _ in per_k[2]])
        m2 = np.concatenate([m for _, m in per_k[2]])
        _, eps_k2 = accuracy_with_ties(h2, m2)
    subsets, all_h, all_m, margins, correct = {}, [], [], [], []
    groups_right = groups_total = 0
    for k in sorted(per_k):
        h = np.concatenate([x for x, _ in per_k[k]])
        m = np.concatenate([x for _, x in per_k[k]])
        if k == 2:
            pairwise, eps = accuracy_with_ties(h, m)
            rule = "with ties (tie-calibrated eps)"
        else:
            pairwise, eps = accuracy_without_ties(h, m), None
            rule = "without ties"
        right = sum(_group_right(gh, gm, eps_k2) for gh, gm in per_k[k])
        subsets[f"K={k}"] = {"pairwise_accuracy": pairwise, "pairwise_rule": rule, "pairs": int(len(h)),
                             "tie_pairs": int(np.sum(h == 0)), "group_accuracy": _acc(right, len(per_k[k])),
                             "groups": len(per_k[k]), "groups_right": right, "tie_epsilon": eps}
        groups_right += right
        groups_total += len(per_k[k])
        all_h.append(h)
        all_m.append(m)
        strict = h != 0
        margins.append((m * h)[strict])  # score(better) - score(worse)
        correct.append((m * h)[strict] > 0)
    h, m = (np.concatenate(x) if x else np.zeros(0) for x in (all_h, all_m))
    overall_pairwise, overall_eps = accuracy_with_ties(h, m)
    overall = {"pairwise_accuracy": overall_pairwise, "pairwise_rule": "with ties (tie-calibrated eps, pooled)",
               "tie_epsilon": overall_eps, "pairs": int(len(h)), "group_accuracy": _acc(groups_right, groups_total),
               "groups": groups_total, "groups_right": groups_right, "group_tie_epsilon": eps_k2}
    bars = {"pairwise": {k: v["pairwise_accuracy"] for k, v in subsets.items()},
            "group": {k: v["group_accuracy"] for k, v in subsets.items()}}
    return MetricResult({"subsets": subsets, "overall": overall,
                         "headline": {"pairwise_accuracy": overall_pairwise,
                                      "group_accuracy": overall["group_accuracy"]}},
                        bars, {"pairwise": overall_pairwise, "group": overall["group_accuracy"]},
                        np.concatenate(margins) if margins else np.zeros(0),
                        np.concatenate(correct) if correct else np.zeros(0, dtype=bool))


def _group_right(h: np.ndarray, m: np.ndarray, eps: float) -> bool:
    strict_ok = (h == 0) | (h * m > 0)
    tie_ok = (h != 0) | (np.abs(m) <= eps)
    return bool(np.all(strict_ok & tie_ok))


def mmrb2_metrics(items: list[PairItem], score: ScoreFn) -> MetricResult:
    margins, correct = _strict_pairs(items, score)
    subsets = {}
    for name in ("single", "multi"):
        mask = np.array([it.category == name for it in items], dtype=bool)
        n = int(mask.sum())
        subsets[name] = {"accuracy": _acc(int(correct[mask].sum()), n), "correct": int(correct[mask].sum()),
                         "pairs": n}
    weighted = [(v["pairs"], v["accuracy"]) for v in subsets.values() if v["pairs"]]
    total = sum(n for n, _ in weighted)
    overall = sum(n * a for n, a in weighted) / total if total else None
    formula = " + ".join(f"{v['pairs']}*{name}" for name, v in subsets.items()) + f") / {total}"
    return MetricResult({"subsets": subsets, "overall": {"accuracy": overall, "pairs": total,
                                                         "formula": "(" + formula},
                         "headline": {"overall": overall, "single": subsets["single"]["accuracy"],
                                      "multi": subsets["multi"]["accuracy"]}},
                        {"accuracy": {k: v["accuracy"] for k, v in subsets.items()}}, {"accuracy": overall},
                        margins, correct)


def synthetic_metrics(items: list[PairItem], score: ScoreFn) -> MetricResult:
    margins, correct = _strict_pairs(items, score)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for it, ok in zip(items, correct):
        counts[it.category][0] += int(ok)
        counts[it.category][1] += 1
    per = {op: {"accuracy": _acc(*counts[op]), "correct": counts[op][0], "total": counts[op][1]}
           for op in sorted(counts)}
    pooled = _acc(int(correct.sum()), len(items))
    macro = _mean(v["accuracy"] for v in per.values())
    return MetricResult({"per_operation": per, "accuracy": pooled, "macro_average": macro, "pairs": len(items),
                         "headline": {"accuracy": pooled, "macro_average": macro}},
                        {"accuracy": {k: v["accuracy"] for k, v in per.items()}}, {"accuracy": pooled},
                        margins, correct)


METRICS = {"editreward-bench": editscore_metrics, "editreward-bench-tiger": tiger_metrics,
           "mmrb2-edit": mmrb2_metrics, "synthetic": synthetic_metrics}
