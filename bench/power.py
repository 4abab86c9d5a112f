"""How many seed sets, of how many samples, a leaderboard needs: a power analysis from a pilot run.

A table's marks come from paired t-tests over its K seed sets (:mod:`gasbench.paired`). Two
neighbouring rows of a column (adjacent when the column is ranked) can be told apart when their
gap is at least the difference the one-sided test at level ``ALPHA`` detects with probability
``power``:

    MDE = (t_{1-ALPHA, K-1} + t_{power, K-1}) * s_d / sqrt(K)

with s_d the std of the pair's per-seed-set differences (the standard paired-t power
approximation). A pilot's records give each pair's gap and s_d; more samples per seed set are
assumed to shrink s_d as 1/sqrt(n) (each seed set's estimate averages n samples' features).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL
from gasbench.paired import ALPHA, detectable_at, scores
from gasbench.tables import direction_of, load_frame

POWER = 0.8


def neighbour_pairs(results_dir: Path, teacher: str, metric: str, nfes: Sequence[int]) -> tuple[list[dict], int, int]:
    """Per NFE, each pair of methods adjacent in the ranking of the pilot's means (plain method
    labels, no ``+option`` configurations): its gap and the std of its paired differences. Also the
    pilot's seed sets and samples per set."""
    frame = load_frame(results_dir)
    sub = frame[(frame.teacher == teacher) & (frame.metric == metric) & frame.per_seed.notna()]
    if not sub.empty:  # only records of the same seed sets pair; the pilot is the most common
        sub = sub[sub.seeds == sub.seeds.mode()[0]]
    teacher_rows = sub[sub.method == TEACHER_LABEL]
    direction = direction_of(metric)
    target = None if teacher_rows.empty else teacher_rows.iloc[0].per_seed
    pairs = []
    for nfe in nfes:
        cells = sub[(sub.nfe == nfe) & ~sub.method.str.contains("+", regex=False) & (sub.method != TEACHER_LABEL)]
        oriented = {r.method: scores(r.per_seed, target, direction) for r in cells.itertuples()}
        ranked = sorted((m for m, s in oriented.items() if s is not None), key=lambda m: oriented[m].mean())
        for better, worse in zip(ranked, ranked[1:]):
            d = oriented[worse] - oriented[better]
            if len(d) > 1:
                pairs.append({"nfe": nfe, "pair": f"{better} < {worse}", "gap": float(d.mean()), "spread": float(d.std(ddof=1))})
    if not pairs:
        raise GasbenchError(f"no {teacher} records with per-seed-set {metric} values at NFE {', '.join(map(str, nfes))} "
                            f"under {results_dir}; a pilot needs `gasbench run -d {teacher} --seeds 3` (at least 2).")
    pilot = sub.iloc[0]
    first_set = ast.literal_eval(pilot.seeds)[0]  # [first seed, last seed]
    return pairs, len(pilot.per_seed), first_set[1] - first_set[0] + 1


def power_rows(pairs: list[dict], pilot_sets: int, pilot_samples: int, seed_sets: Sequence[int],
               samples: Sequence[int]) -> list[dict]:
    """For each design (K seed sets of n samples): the median detectable gap over the pilot's
    neighbour pairs, how many of their gaps it detects, and its sampling cost against the pilot's."""
    rows = []
    for k in seed_sets:
        for n in samples:
            shrink = math.sqrt(pilot_samples / n)
            detectable = [detectable_at(p["spread"] * shrink, k, POWER) for p in pairs]
            found = sum(0 < p["gap"] >= m for p, m in zip(pairs, detectable))
            rows.append({"seed sets": k, "samples per set": n, "median detectable gap": float(np.median(detectable)),
                         "neighbour gaps detected": f"{found} of {len(pairs)}",
                         "sampling cost": f"{k * n / (pilot_sets * pilot_samples):.2g}x"})
    return rows


def power_markdown(pairs: list[dict], rows: list[dict], pilot_sets: int, pilot_samples: int) -> str:
    """The pilot's neighbour pairs, then the designs, as markdown."""
    pilot = pd.DataFrame(pairs).rename(columns={"spread": "std of paired differences"})
    return "\n".join([
        f"Pilot: {pilot_sets} seed sets of {pilot_samples:,} samples; neighbouring rows of each column:", "",
        pilot.to_markdown(index=False, floatfmt=".3g"), "",
        f"Designs (one-sided paired t-test, alpha = {ALPHA}, power {POWER}; std scaled as 1/sqrt(samples)):", "",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")])
