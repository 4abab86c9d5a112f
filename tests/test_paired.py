"""Decisive leaderboards: bold and teacher marks from paired tests over the seed sets."""

import numpy as np
import pytest
from helpers import gasbench
from scipy import stats

from gasbench.core.records import SCHEMA_VERSION, TEACHER_LABEL, cell_dir, write_json_atomic
from gasbench.paired import (
    ALPHA,
    LIKE_TEACHER,
    detectable_at,
    detectable_difference,
    like_teacher,
    tied_with_best,
    worse_p_value,
)
from gasbench.power import POWER, neighbour_pairs, power_rows
from gasbench.tables import render

SEEDS = [[50000, 50999], [51000, 51999], [52000, 52999]]


def record(root, method, nfe, per_seed, metric="fd", seeds=SEEDS, learned=False):
    values = np.asarray(per_seed, dtype=float)
    write_json_atomic(cell_dir(root, "digits", method, nfe) / "metrics.json", {
        "schema": SCHEMA_VERSION, "teacher": {"name": "digits"}, "method": method, "nfe": nfe, "seeds": seeds,
        "solver": {"name": "unipc" if method == TEACHER_LABEL else method.split("+")[0], "learned": learned,
                   **({} if learned else {"schedule": "logsnr"})}, "training": None, "wall_time_s": 1.0,
        "metrics": {metric: float(values.mean())}, "metrics_std": {metric: float(values.std(ddof=1)) if len(values) > 1 else float("nan")},
        "metrics_per_seed_set": {metric: list(map(float, values))},
    })


def cells(markdown: str) -> dict[str, list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


@pytest.fixture
def results(tmp_path):
    """Seed set 2 is lowest for every method, as on digits (values exact in binary). `best` is the
    teacher's values give or take 1/16. `close` is worse than `best` by 1/8 on every seed set: its
    unpaired error bar (std 0.76) overlaps best's, its paired difference does not vary, so it is
    significantly worse. `noisy` is worse by +0.5, -0.375, +0.25: not significant. `far` is 2 above."""
    root = tmp_path / "results"
    base = np.array([4.0, 3.0, 4.5])
    best = base + [0.0625, -0.0625, 0.0]
    record(root, TEACHER_LABEL, 50, base)
    record(root, "best", 4, best)
    record(root, "close", 4, best + 0.125)
    record(root, "noisy", 4, best + [0.5, -0.375, 0.25])
    record(root, "far", 4, base + 2.0)
    return root


def test_paired_marks_tie_what_the_seeds_cannot_separate(results):
    table = render(results, ["fd"])
    shown = cells(table)
    assert shown["best"][0].startswith("**") and shown["best"][0].endswith(f"{LIKE_TEACHER}**")
    assert not shown["close"][0].startswith("**"), "a constant +1/8 on every seed set is significantly worse"
    assert shown["noisy"][0].startswith("**"), "differences of +0.5, -0.375, +0.25 are not significant"
    assert shown["noisy"][0].endswith(f"{LIKE_TEACHER}**")
    assert not shown["far"][0].startswith("**") and LIKE_TEACHER not in shown["far"][0]
    assert "one-sided paired t-test over the 3 seed sets" in table and "Smallest fd difference" in table


def test_unpaired_error_bars_overlap_where_the_paired_test_separates(results):
    close, best = np.array([4.3, 3.3, 4.9]), np.array([4.2, 3.2, 4.8])
    assert abs(close.mean() - best.mean()) < close.std(ddof=1)  # the error bars overlap
    assert worse_p_value(close, best) < ALPHA
    assert tied_with_best({"best": best, "close": close}, None, "lower")[0] == {"best"}
    # higher is better: close is then the best, and best significantly worse
    assert tied_with_best({"best": best, "close": close}, None, "higher")[0] == {"close"}


def test_like_teacher_and_detectable_difference():
    teacher = np.array([4.0, 3.0, 4.6])
    assert like_teacher(teacher + [0.01, -0.01, 0.0], teacher)
    assert not like_teacher(teacher + 1.0, teacher)
    spread = detectable_difference(teacher + [0.5, -0.4, 0.2], teacher)
    assert spread == pytest.approx(2.919986 * np.std([0.5, -0.4, 0.2], ddof=1) / np.sqrt(3), rel=1e-5)


def test_vs_tables_the_paired_differences(results):
    shown = cells(render(results, ["fd"], vs="best"))
    assert shown["close"][0] == "+0.125 ± 0"
    assert shown["far"][0] == "+2 ± 0.062"
    assert "best" not in shown
    assert cells(render(results, ["fd"], vs="teacher"))["far"][0] == "+2 ± 0"


def test_one_seed_set_bolds_the_best_mean_alone_and_says_why(tmp_path):
    root = tmp_path / "results"
    record(root, "a", 4, [4.0], seeds=SEEDS[:1])
    record(root, "b", 4, [4.05], seeds=SEEDS[:1])
    table = render(root, ["fd"])
    assert cells(table)["a"][0].startswith("**") and not cells(table)["b"][0].startswith("**")
    assert "One seed set: no difference can be tested" in table


def test_rows_from_other_seed_sets_are_not_paired(tmp_path):
    """b would tie with a if paired (as `noisy` above), but it sampled other seeds: no test, the
    best mean alone is bold."""
    root = tmp_path / "results"
    record(root, "a", 4, [4.0, 3.0, 4.6])
    record(root, "b", 4, np.array([4.0, 3.0, 4.6]) + [0.5, -0.4, 0.2], seeds=[[1, 1000], [1001, 2000], [2001, 3000]])
    assert not cells(render(root, ["fd"]))["b"][0].startswith("**")


def test_rows_are_grouped_as_the_papers_group_them_and_ablations_get_their_own_table(tmp_path):
    root = tmp_path / "results"
    record(root, TEACHER_LABEL, 50, [4.0, 3.0, 4.6])
    record(root, "gs", 4, [4.5, 3.5, 5.0], learned=True)
    record(root, "gs+decouple=false", 4, [4.9, 3.9, 5.4], learned=True)
    record(root, "euler", 4, [9.0, 8.0, 9.5])
    record(root, "ipndm", 4, [5.0, 4.0, 5.5])
    table = render(root, ["fd"])
    main, ablations = table.split("### digits: fd, ablations and other configurations")
    assert list(cells(main)) == ["Teacher (unipc NFE 50)", "euler", "ipndm", "gs"]
    assert list(cells(ablations)) == ["Teacher (unipc NFE 50)", "gs", "gs+decouple=false"]
    assert list(cells(render(root, ["fd"], sort=True).split("### digits: fd, ablations")[0])) == \
        ["Teacher (unipc NFE 50)", "ipndm", "euler", "gs"]


def test_the_detectable_gap_is_found_with_the_stated_power():
    """Simulated paired differences whose mean is detectable_at(s, K): the one-sided paired t-test
    rejects in about POWER of the trials (the approximation the power analysis rests on)."""
    rng = np.random.default_rng(0)
    for sets in (3, 5, 8):
        gap = detectable_at(1.0, sets, POWER)
        d = rng.normal(gap, 1.0, size=(4000, sets))
        t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(sets))
        rejected = (t > stats.t.ppf(1 - ALPHA, sets - 1)).mean()
        assert abs(rejected - POWER) < 0.06, (sets, rejected)
    assert detectable_at(1.0, 8, POWER) < detectable_at(1.0, 5, POWER) < detectable_at(1.0, 3, POWER)


def test_power_analysis_reads_neighbouring_rows_from_a_pilot(tmp_path, monkeypatch, capsys):
    root = tmp_path / "results"
    base = np.array([4.0, 3.0, 4.5])
    record(root, TEACHER_LABEL, 50, base)
    record(root, "a", 4, base)
    record(root, "b", 4, base + 0.5)
    record(root, "c", 4, base + [3.5, 2.0, 1.5])
    record(root, "a+x=1", 4, base + 9)  # a configuration: not a leaderboard row
    record(root, "d", 4, [1.0, 2.0], seeds=SEEDS[:2])  # other seed sets: they do not pair
    pairs, sets, samples = neighbour_pairs(root, "digits", "fd", [4])
    assert [p["pair"] for p in pairs] == ["a < b", "b < c"] and (sets, samples) == (3, 1000)
    assert pairs[0]["gap"] == pytest.approx(0.5) and pairs[0]["spread"] == 0
    assert pairs[1]["gap"] == pytest.approx(11 / 6) and pairs[1]["spread"] == pytest.approx(np.std([3.0, 1.5, 1.0], ddof=1))
    rows = {(r["seed sets"], r["samples per set"]): r for r in power_rows(pairs, sets, samples, [3, 8], [1000, 250])}
    assert rows[(3, 1000)]["neighbour gaps detected"] == "1 of 2", "b < c: 1.83 < 2.30 x 1.04 / sqrt(3)"
    assert rows[(8, 1000)]["neighbour gaps detected"] == "2 of 2"
    assert rows[(8, 250)]["median detectable gap"] == pytest.approx(2 * rows[(8, 1000)]["median detectable gap"])
    assert rows[(8, 250)]["sampling cost"] == "0.67x"

    code, out, err = gasbench(monkeypatch, capsys, "bench", "power", "-d", "digits", "--results-dir", root,
                              "--seed-sets", "3,8")
    assert code == 0 and "b < c" in out and "a+x=1" not in out and "Pilot: 3 seed sets of 1,000 samples" in out
    code, out, err = gasbench(monkeypatch, capsys, "bench", "power", "-d", "fashion", "--results-dir", root)
    assert code != 0 and "no fashion records" in out + err and "Traceback" not in out + err
    code, out, err = gasbench(monkeypatch, capsys, "bench", "power", "-d", "digits", "--results-dir", root,
                              "--seed-sets", "1,3")
    assert code != 0 and "at least 2" in out + err
