"""Paired statistics over seed sets: which differences in a leaderboard the seeds can tell apart.

Every method of a run samples the same evaluation seed sets, so seed set k's value of one method
and of another share their noise (seed set 2 of digits is the lowest for every method). A method is
compared with another by the per-seed-set differences d_k = a_k - b_k (a paired t-test over the
K seed sets), not by overlapping error bars: a pair whose unpaired stds overlap can still differ
on every seed set by the same amount.

* **Ties with the best** (bold): in each column the method with the best mean, and every method
  whose paired difference to it is not significantly worse (one-sided paired t-test, level
  :data:`ALPHA`). Scores are oriented so that lower is better: the value, its negative for
  higher-is-better metrics, its distance to the teacher's value of the same seed set for metrics
  a sampler should match its teacher on.
* **Like the teacher** (marked :data:`LIKE_TEACHER`): a two-sided paired t-test of the method's
  values against the teacher row's on the same seed sets does not reject equality at ``ALPHA``.
* **Detectable difference**: with K seed sets and s_d the std of the paired differences, the
  smallest mean difference the one-sided test rejects is t_{1-ALPHA, K-1} s_d / sqrt(K); a
  table's footer states the median of it over its cells.

Without several seed sets (``gasbench run --seeds 1``) nothing can be tested: the best mean is
bold alone and the footer says so.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
LIKE_TEACHER = "≈"  # beside a value indistinguishable from the teacher's


def scores(values: Sequence[float], teacher: Optional[Sequence[float]], direction: str) -> Optional[np.ndarray]:
    """Per-seed-set values oriented so that lower is better (None when a teacher-direction metric
    has no teacher values to be close to)."""
    values = np.asarray(values, dtype=float)
    if direction == "lower":
        return values
    if direction == "higher":
        return -values
    return None if teacher is None else np.abs(values - np.asarray(teacher, dtype=float))


def worse_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """p of the one-sided paired t-test that scores ``a`` are higher (worse) than ``b``; 1.0 when
    the differences are all zero, 0.0 when they are equal and positive (no spread to test)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.allclose(d, d[0]):
        return 0.0 if d[0] > 0 else 1.0
    return float(stats.ttest_rel(a, b, alternative="greater").pvalue)


def differ_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """p of the two-sided paired t-test of ``a`` against ``b`` (constant differences: 0 or 1)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def tied_with_best(per_seed: dict[str, Sequence[float]], teacher: Optional[Sequence[float]],
                   direction: str) -> tuple[set[str], list[float]]:
    """The methods of one column that are bold (the best mean score and those not significantly
    worse), and each other method's detectable difference to the best, on the oriented scores.
    ``per_seed``: method -> values over the same seed sets (at least two)."""
    oriented = {m: scores(v, teacher, direction) for m, v in per_seed.items()}
    oriented = {m: s for m, s in oriented.items() if s is not None}
    if not oriented:
        return set(), []
    best = min(oriented, key=lambda m: oriented[m].mean())
    others = {m: s for m, s in oriented.items() if m != best}
    tied = {best} | {m for m, s in others.items() if worse_p_value(s, oriented[best]) >= ALPHA}
    return tied, [detectable_difference(s, oriented[best]) for s in others.values()]


def like_teacher(values: Sequence[float], teacher: Sequence[float]) -> bool:
    return differ_p_value(values, teacher) >= ALPHA


def detectable_at(spread: float, seed_sets: int, power: float = 0.5) -> float:
    """The mean paired difference a one-sided paired t-test at ``ALPHA`` over ``seed_sets`` sets
    detects with probability ``power`` when the per-set differences have std ``spread``:
    (t_{1-ALPHA, K-1} + t_{power, K-1}) spread / sqrt(K). At power 0.5 (t = 0) it is the smallest
    difference the test rejects."""
    freedom = seed_sets - 1
    return float((stats.t.ppf(1 - ALPHA, freedom) + stats.t.ppf(power, freedom)) * spread / math.sqrt(seed_sets))


def detectable_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """The smallest mean paired difference the one-sided test at ``ALPHA`` rejects, with the
    spread these two rows' differences show."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return detectable_at(float(d.std(ddof=1)), len(d))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std of the per-seed-set differences a - b."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan")


def footer(seed_sets: int, detectable: list[float], metric: str) -> str:
    """The line under a leaderboard that says how its marks were decided."""
    if seed_sets < 2:
        return ("Bold: the best mean. One seed set: no difference can be tested "
                "(`gasbench run --seeds 3` records the per-seed-set values the paired tests need).")
    smallest = f"{np.median(detectable):.3g}" if detectable else "-"
    return (f"Bold: the best mean and every method not significantly worse than it (one-sided paired t-test "
            f"over the {seed_sets} seed sets, alpha = {ALPHA}); {LIKE_TEACHER}: not significantly different from the "
            f"teacher (two-sided, alpha = {ALPHA}). Smallest {metric} difference these seed sets detect "
            f"(median over the cells): {smallest}.")
