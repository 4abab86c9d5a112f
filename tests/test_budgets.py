"""Training budgets (gasbench.budgets): the passes a fit spends are counted and recorded, `--budget
matched` gives every learned method the reference's pairs and passes, `--budget paper` applies each
method's paper settings, and a bad budget gets one message."""

import json

import pytest
import yaml

from gasbench.budgets import budget_options, budget_rows
from gasbench.core.registry import SOLVERS
from gasbench.solvers.fit import counting_passes
from gasbench.teachers.base import NetworkPasses

from helpers import gasbench

LEARNED = [e.name for e in SOLVERS if getattr(e.obj, "learned", False) and getattr(e.obj, "in_default_run", True)]


@pytest.mark.parametrize("name", LEARNED)
def test_passes_per_iteration_is_what_an_iteration_spends(name, gmm, gmm_pairs):
    """The formula the matched budget sizes fits by agrees with the passes counted at the
    denoiser in real training iterations (so a method that changes its step must change both)."""
    solver = SOLVERS.get(name)(iterations=2, batch_size=4)
    result = solver.fit(gmm, 4, *gmm_pairs, progress=False)
    assert result.passes["total"] == 2 * solver.passes_per_iteration(4)
    assert result.passes["total"] == result.passes["forward"] + result.passes["backward"] > 0
    assert result.teacher_solves == len(gmm_pairs[0]["x0"]) + len(gmm_pairs[1]["x0"])
    assert result.teacher_passes == result.teacher_solves * gmm.reference.nfe


def test_counting_counts_samples_and_backward_only_under_autograd(gmm):
    import torch

    passes = NetworkPasses()
    denoise = gmm.denoiser(None)
    x = torch.randn(5, *gmm.shape, dtype=torch.float64)
    with counting_passes(gmm, passes):
        denoise(x, torch.tensor(1.0))
        with torch.no_grad():
            denoise(x[:2], torch.tensor(1.0))
    denoise(x, torch.tensor(1.0))  # outside: not counted
    assert (passes.forward, passes.backward, passes.total) == (7, 5, 12)
    assert gmm.passes is None


def test_matched_budget_equalises_pairs_and_passes(gmm):
    reference = SOLVERS.get("gs")()
    target = reference.config["iterations"] * reference.passes_per_iteration(4)
    for name in LEARNED:
        cls = SOLVERS.get(name)
        options = budget_options(cls, "matched", gmm, 4)
        solver = cls(**options)
        assert solver.config["train_size"] == reference.config["train_size"]
        spent = solver.config["iterations"] * solver.passes_per_iteration(4)
        assert abs(spent - target) <= solver.passes_per_iteration(4) / 2, name


def test_paper_budget_is_the_methods_own(gmm, monkeypatch):
    cls = SOLVERS.get("ld3")
    monkeypatch.setattr(cls, "paper_budget", classmethod(lambda c, teacher: {"iterations": 7, "loss": "l2"}))
    assert budget_options(cls, "paper", gmm, 4) == {"iterations": 7, "loss": "l2", "patience": 0}  # the papers train their full count
    assert budget_options(cls, "cpu", gmm, 4) == {}
    rows = {(r["method"], r["budget"]): r for r in budget_rows(gmm, 4)}
    assert rows[("ld3", "paper")]["iterations"] == 7 and rows[("ld3", "cpu (default)")]["iterations"] != 7


@pytest.mark.slow
def test_matched_run_records_equal_passes(tmp_path, monkeypatch, capsys):
    """Through the CLI: gs trained as the run configures it (10 iterations), ld3 and s4s matched to it."""
    config = tmp_path / "matched.yaml"
    config.write_text(yaml.safe_dump({"methods": {"gs": {"iterations": 10, "batch_size": 8}, "ld3": {}, "s4s": {}},
                                      "budget": "matched"}))
    results = tmp_path / "results"
    code, out, err = gasbench(monkeypatch, capsys, "run", "--config", config, "-d", "gmm", "--nfe", "2", "-n", "16",
                              "--metrics", "rmse", "--results-dir", results)
    assert code == 0, err
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in results.glob("gmm/*/nfe2/metrics.json")}
    assert set(records) == {"gs+batch_size=8+iterations=10+budget=matched", "ld3+budget=matched", "s4s+budget=matched"}
    spent = {label: r["training"]["passes"]["total"] for label, r in records.items()}
    target = 10 * 2 * 2 * 8
    for label, record in records.items():
        assert record["training"]["budget"] == "matched"
        assert record["training"]["train_size"] == 1400
        batch = record["solver"]["batch_size"]
        assert abs(spent[label] - target) <= 2 * 2 * batch, (label, spent[label])
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", results, "--metric", "train_passes")
    assert code == 0 and "train_passes" in out and "320" in out
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", results, "--metric", "train_passes", "--nfe", "2")
    assert code == 0 and "NFE=2" in out
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", results, "--metric", "train_passes", "--nfe", "4")
    assert "NFE=2" not in out


def test_unknown_budget_is_one_message(tmp_path, monkeypatch, capsys):
    code, out, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "gs", "--budget", "huge",
                              "--results-dir", tmp_path)
    assert code != 0 and "--budget huge" in err and "cpu, paper, matched" in err and "Traceback" not in err


def test_budgets_table_is_written_into_a_document(tmp_path, monkeypatch, capsys):
    """`gasbench budgets --into` fills the named block with the rows it prints, keeping the rest."""
    document = tmp_path / "budgets.md"
    document.write_text("before\n<!-- gasbench-table:b:start -->\nstale\n<!-- gasbench-table:b:end -->\nafter\n")
    code, out, err = gasbench(monkeypatch, capsys, "budgets", "-d", "gmm", "--nfe", "4", "--into", document, "--block", "b")
    assert code == 0, err
    text = document.read_text()
    assert "stale" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert out.strip() in text and "| gs " in text and "matched" in text
