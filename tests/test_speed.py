"""What makes the default run fast without changing what it measures: early stopping of the fits
(the CPU budget's one rule for every method), and the phase times `gasbench bench profile` reads."""

import json

import torch
from helpers import gasbench

from gasbench.core import phases
from gasbench.core.registry import SOLVERS
from gasbench.solvers.fit import MIN_IMPROVEMENT, checks_without_improvement


def test_checks_without_improvement_counts_from_the_last_real_improvement():
    assert checks_without_improvement([]) == 0
    assert checks_without_improvement([1.0, 0.5, 0.4]) == 0
    # 0.399 is less than 1% below 0.4: not an improvement; nor is a rise
    assert checks_without_improvement([1.0, 0.4, 0.4 * (1 - MIN_IMPROVEMENT / 2), 0.45]) == 2
    assert checks_without_improvement([1.0, 0.4, 0.41, 0.3]) == 0


def test_a_fit_whose_loss_stalls_stops_early_and_says_so(gmm, gmm_pairs):
    """lr 0 keeps the parameters where they start, so no check improves on the first: with
    patience 2 and a check every 5 iterations the fit stops after 15 of its 200."""
    solver = SOLVERS.get("gs")(iterations=200, batch_size=8, lr=0.0, validate_every=5, patience=2)
    result = solver.fit(gmm, 3, *gmm_pairs, progress=False)
    assert result.stopped_at == 15 and result.iterations == 15
    assert [point[0] for point in result.validation_curve] == [5, 10, 15]
    assert result.passes["forward"] == 15 * 8 * 3
    assert result.early_stopping == {"patience": 2, "validate_every": 5, "cap": 200, "pairs": 48,
                                     "min_improvement": MIN_IMPROVEMENT}


def test_a_learning_fit_runs_to_its_cap_and_patience_zero_never_stops(gmm, gmm_pairs):
    learning = SOLVERS.get("gs")(iterations=30, batch_size=8, validate_every=5, patience=50)
    flat = SOLVERS.get("gs")(iterations=30, batch_size=8, lr=0.0, validate_every=5, patience=0)
    for solver in (learning, flat):
        result = solver.fit(gmm, 3, *gmm_pairs, progress=False)
        assert result.stopped_at is None and result.iterations == 30 and len(result.validation_curve) == 6


def test_a_stopped_fit_resumed_from_its_checkpoint_stays_stopped(gmm, gmm_pairs, tmp_path):
    config = dict(iterations=200, batch_size=8, lr=0.0, validate_every=5, patience=2)
    checkpoint = tmp_path / "fit.pt"
    first = SOLVERS.get("gs")(**config)
    first.fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=checkpoint)
    again = SOLVERS.get("gs")(**config)
    result = again.fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=checkpoint)
    assert result.resumed_at == 15 and result.stopped_at == 15 and result.passes == first.summary["passes"]
    for key in first.params:
        assert torch.equal(first.params[key], again.params[key])


def test_only_the_cpu_budget_stops_early(gmm):
    from gasbench.budgets import budget_options

    for name in ("gs", "gas", "ld3", "s4s", "s4s-alt", "dlms"):
        cls = SOLVERS.get(name)
        assert cls().config["patience"] > 0, name
        for budget in ("paper", "matched"):
            assert cls(**budget_options(cls, budget, gmm, 4)).config["patience"] == 0, (name, budget)


def test_phases_nest_under_the_path_of_the_open_phases():
    before = phases.totals()
    with phases.phase("outer"):
        with phases.phase("inner"):
            pass
        with phases.phase("inner"):
            pass
    spent = phases.since(before)
    assert set(spent) == {"outer", "outer/inner"}
    assert spent["outer"] >= spent["outer/inner"]


def test_profile_folds_a_runs_phase_times_per_cell_and_method(monkeypatch, capsys, tmp_path):
    args = ["run", "-d", "gmm", "-m", "euler,gs", "--nfe", "3", "-n", "40", "--metrics", "rmse,fd",
            "--solver-arg", "iterations=10", "--solver-arg", "train_size=32", "--solver-arg", "batch_size=8",
            "--results-dir", str(tmp_path)]
    assert gasbench(monkeypatch, capsys, *args)[0] == 0
    record = json.loads((tmp_path / "gmm" / "gs+batch_size=8+iterations=10+train_size=32" / "nfe3" / "metrics.json").read_text())
    assert {"fit_step", "fit_step/backward", "validation", "sampling", "metrics"} <= set(record["time_s"])
    code, out, _ = gasbench(monkeypatch, capsys, "bench", "profile", "--results-dir", str(tmp_path))
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("| gs+")]
    assert len(lines) == 2 and "all" in lines[1] and "%" in lines[1]
    code, _, err = gasbench(monkeypatch, capsys, "bench", "profile", "--results-dir", str(tmp_path / "empty"))
    assert code != 0 and "no record" in err


def test_jobs_share_the_cells_and_write_the_records_of_one_process(monkeypatch, capsys, tmp_path):
    """`--jobs 2` on 2 cells: each cell is computed once (one fit log line per learned cell across
    both processes' output), and the records equal those of a one-process run with the same
    threads, but for the volatile fields and the command line."""
    from gasbench.core.records import without_volatile

    args = ["run", "-d", "gmm", "-m", "gs,ld3", "--nfe", "3", "-n", "40", "--metrics", "rmse",
            "--solver-arg", "iterations=40", "--solver-arg", "train_size=32", "--solver-arg", "batch_size=8",
            "--threads", "1"]
    code, _, err = gasbench(monkeypatch, capsys, *args, "--jobs", "2", "--results-dir", tmp_path / "two")
    assert code == 0, err
    assert "2 processes with 1 threads each" in err
    worker_log = (tmp_path / "two" / ".jobs" / "worker-1.log").read_text()
    assert gasbench(monkeypatch, capsys, *args, "--jobs", "1", "--results-dir", tmp_path / "one")[0] == 0
    for one in sorted((tmp_path / "one" / "gmm").glob("*/nfe3/metrics.json")):
        two = tmp_path / "two" / one.relative_to(tmp_path / "one")
        a, b = (without_volatile(json.loads(p.read_text())) for p in (one, two))
        for record in (a, b):
            record["run_config"].pop("command")
            record["run_config"].pop("results_dir")
        assert a == b, one
    fitted_here = err.count("fit gs NFE 3") > 0, err.count("fit ld3 NFE 3") > 0
    fitted_there = "fit gs NFE 3" in worker_log, "fit ld3 NFE 3" in worker_log
    assert [here + there for here, there in zip(fitted_here, fitted_there)] == [1, 1]


def test_jobs_must_be_a_positive_count_or_auto(monkeypatch, capsys, tmp_path):
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "--jobs", "0", "--results-dir", tmp_path)
    assert code != 0 and "--jobs expects a positive integer or 'auto'" in err


def test_the_run_level_count_includes_the_other_processes_cells(tmp_path):
    """Under --jobs the cells bar counts every record this command writes, whoever wrote it, so its
    ETA is the whole run's; a record from before the command, reused, leaves the total instead."""
    import os
    import time

    from rich.progress import Progress

    from gasbench.jobs import CellCount

    paths = [tmp_path / f"cell{i}" / "metrics.json" for i in range(4)]
    for p in paths:
        p.parent.mkdir()
    paths[0].write_text("{}")  # recorded before the command
    os.utime(paths[0], (time.time() - 60, time.time() - 60))
    progress = Progress(disable=True)
    count = CellCount(progress, progress.add_task("cells", total=4), paths)
    count.reuse(paths[0])
    paths[1].write_text("{}")  # this process
    paths[2].write_text("{}")  # the other process
    count.refresh()
    task = progress.tasks[0]
    assert (task.completed, task.total) == (2, 3)
    count.reuse(paths[2])  # the other's record, reused at the end: already counted
    assert progress.tasks[0].total == 3
