"""The same command twice writes the same records and samples; `gasbench verify` re-samples a
cell and catches a tampered record or solver state; a record of another evaluation (seed sets,
metrics) is reused when it covers the run's, and otherwise never replaced silently."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gasbench.cli import main
from gasbench.core.records import read_record, without_volatile
from helpers import gasbench

GS = "gs+batch_size=8+iterations=6+train_size=32"
RUN = ["run", "-d", "gmm", "-m", "euler,gs", "--nfe", "3", "-n", "40", "--batch-size", "16", "--metrics", "rmse,fd",
       "--solver-arg", "iterations=6", "--solver-arg", "train_size=32", "--solver-arg", "batch_size=8",
       "--results-dir", "results"]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """RUN in a fresh directory, twice (the first results moved aside; the trajectory cache kept)."""
    cwd = tmp_path_factory.mktemp("repro")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    mp.setattr(sys, "argv", ["gasbench", *RUN])
    torch.set_num_threads(1)
    try:
        main()
        (cwd / "results").rename(cwd / "first")
        main()
    finally:
        mp.undo()
    return cwd / "first", cwd / "results"


def test_same_command_twice_writes_identical_records_and_samples(twice):
    first, second = twice
    a, b = files(first), files(second)
    assert a.keys() == b.keys()
    records = [name for name in a if name.endswith("metrics.json")]
    assert len(records) == 3  # teacher row, euler, gs
    for name in records:
        assert read_record(first / name) is not None
        assert without_volatile(read_record(first / name)) == without_volatile(read_record(second / name)), name
    # grids, the learned state (retrained: its cell was moved away) and solver.json's config bit for bit
    for name in a:
        if not name.endswith("metrics.json") and not name.endswith("solver.json"):
            assert a[name] == b[name], name
    assert not [name for name in a if name.endswith(".lock")]  # locks are removed on release


def test_records_carry_what_reproduces_them(twice):
    _, results = twice
    record = read_record(results / "gmm" / GS / "nfe3" / "metrics.json")
    assert record["run_config"]["command"] == "gasbench " + " ".join(RUN)
    assert record["run_config"]["seed"] == 50000 and record["run_config"]["batch_size"] == 16
    assert {"gasbench", "torch", "numpy", "python", "code_revision"} <= record["versions"].keys()
    assert record["environment"]["device"] == "cpu" and record["environment"]["threads"] == 1
    state = (results / "gmm" / GS / "nfe3" / "solver.safetensors").read_bytes()
    assert record["solver"]["state_sha256"] == hashlib.sha256(state).hexdigest()
    checksums = record["sample_checksums"]
    assert len(checksums["sha256_per_seed_set"]) == 1 and len(checksums["first_seeds"]) == 16
    assert [entry["seed"] for entry in checksums["first_seeds"]] == list(range(50000, 50016))
    assert "state_sha256" not in read_record(results / "gmm" / "euler" / "nfe3" / "metrics.json")["solver"]


def test_verify_confirms_fresh_cells(twice, monkeypatch, capsys):
    _, results = twice
    for cell in (f"gmm/{GS}/nfe3", "gmm/euler/nfe3", "gmm/teacher/nfe50"):
        code, out, _ = gasbench(monkeypatch, capsys, "verify", results / cell, "--samples", "12", "--all-seeds")
        assert code == 0, out
        assert "12 re-sampled seeds (50000-50011) bit-identical to the record" in out
        assert "MISMATCH" not in out and out.rstrip().endswith("checks pass")


def test_verify_fails_on_a_tampered_checksum_or_state(twice, tmp_path, monkeypatch, capsys):
    _, results = twice
    euler = shutil.copytree(results / "gmm" / "euler" / "nfe3", tmp_path / "euler")
    record = json.loads((euler / "metrics.json").read_text())
    record["sample_checksums"]["first_seeds"][3]["sha256"] = "0" * 16
    (euler / "metrics.json").write_text(json.dumps(record))
    code, out, _ = gasbench(monkeypatch, capsys, "verify", euler)
    assert code == 1
    assert "MISMATCH  samples: 1 of 8 re-sampled seeds (50000-50007) differ from the record: seed 50003" in out
    assert "FAILED" in out

    gs = shutil.copytree(results / "gmm" / GS / "nfe3", tmp_path / "gs")
    state = load_file(str(gs / "solver.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 0.01
    save_file(state, str(gs / "solver.safetensors"))
    code, out, _ = gasbench(monkeypatch, capsys, "verify", gs)
    assert code == 1
    assert "MISMATCH  solver state sha256: recorded" in out
    assert "MISMATCH  samples: 8 of 8 re-sampled seeds" in out and "relative difference" in out


def test_verify_explains_a_cell_without_record(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "verify", tmp_path)
    assert code == 2 and "holds no gasbench record" in err


def test_a_record_over_more_seed_sets_is_reused_and_another_evaluation_stops_the_run(tmp_path, monkeypatch, capsys):
    """--seeds 2 first: a plain run (1 seed set) reuses those records as they are; --seeds 3 or
    another --num-samples stops before any work, naming --overwrite, which then replaces them."""
    base = ["run", "-d", "gmm", "-m", "euler", "--nfe", "3", "-n", "16", "--metrics", "rmse,fd", "--results-dir", tmp_path]
    assert gasbench(monkeypatch, capsys, *base, "--seeds", "2")[0] == 0
    before = files(tmp_path)
    code, _, err = gasbench(monkeypatch, capsys, *base)
    assert code == 0 and "2 cell(s) already hold records over more seed sets or metrics than asked" in err
    assert files(tmp_path) == before
    for other in (["--seeds", "3"], ["-n", "8"]):
        code, _, err = gasbench(monkeypatch, capsys, *base, *other)
        assert code == 2, err
        assert "2 cells already hold records of the same teacher and solver evaluated otherwise" in err
        assert "--overwrite" in err and "--results-dir" in err
        assert files(tmp_path) == before
    assert gasbench(monkeypatch, capsys, *base, "--seeds", "3", "--overwrite")[0] == 0
    assert read_record(tmp_path / "gmm" / "euler" / "nfe3" / "metrics.json")["seeds"][2] == [50032, 50047]


def test_trajectory_cache_does_not_depend_on_the_runs_batch_size(tmp_path, monkeypatch, capsys):
    """The digits teacher's reference solutions, filled by runs with --batch-size 7 and 40 into two
    fresh homes: the same shard files, byte for byte, and the same teacher row."""
    homes = {}
    for batch in ("7", "40"):
        home = tmp_path / f"home-{batch}"
        monkeypatch.setenv("GASBENCH_HOME", str(home))
        code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "digits", "-m", "euler", "--nfe", "4", "-n", "40",
                                "--batch-size", batch, "--metrics", "rmse", "--results-dir", tmp_path / f"results-{batch}")
        assert code == 0, err
        homes[batch] = files(home / "trajectories")
    assert homes["7"] and homes["7"] == homes["40"]
