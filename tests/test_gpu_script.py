"""benchmarks/gpu/run.sh cannot rot: its dry run (tiny sizes on the CPU, the GPU run's code paths)
writes every figure, beside the paper's, where it is told to and into $OUT; and the goals are
judged from the figures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("gpu_measure", BENCH / "measure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One ``run.sh --dry-run``: (completed process, --out folder, $OUT folder, files in benchmarks/gpu before)."""
    root = tmp_path_factory.mktemp("gpu_dry_run")
    out, device_out = root / "figures", root / "device_out"
    device_out.mkdir()
    before = sorted(p.name for p in BENCH.iterdir())
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(device_out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(BENCH / "run.sh"), "--dry-run", "--out", str(out), "--wheels", str(root / "none")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    return done, out, device_out, before


def test_dry_run_writes_every_figure_beside_the_papers(dry_run, measure):
    done, out, device_out, before = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[gpu-bench" in done.stdout and "pytest -m gpu" in done.stdout  # progress, and the tests ran (skipped)
    (json_path,) = out.glob("*.json")
    report = json.loads(json_path.read_text())
    assert report["schema"] == measure.SCHEMA and report["dry_run"] and json_path.name.endswith("-cpu.json")
    cells = {(r["method"], r["nfe"], r["checkpointing"]) for r in report["training"]}
    assert cells == {(m, n, c) for m in ("gs", "gas") for n in (4, 10) for c in (False, True)}
    for row in report["training"]:
        assert row["step_ms"] > 0 and row["network_ms"] > 0 and row["peak_mb"] > 0
        assert row["minutes_10k"] == pytest.approx(row["step_ms"] * 10_000 / 60_000)
    assert report["lpips_loss"]["ms"] > 0 and report["forward"]["images_per_s"] > 0
    assert {(r["method"], r["nfe"]) for r in report["sampling"]} == {(m, n) for m in ("dpmpp3m", "gs") for n in (4, 10)}
    assert report["auto_batch"]["batch"] >= 1
    assert [g["goal"] for g in report["goals"]] == list(measure.GOALS) and all(g["met"] is not None for g in report["goals"])
    tests = report["tests"]
    assert tests["ran"] and tests["returncode"] == 0 and not tests["passed"] and not tests["failed"] and tests["skipped"]
    assert any("CUDA" in reason for reason in tests["skip_reasons"])
    table = json_path.with_suffix(".md").read_text()
    assert "| gs | 4 | no |" in table and "| 30 | 17 |" in table  # GAS Tables 14a, 15a at NFE 4
    assert "| gas | 10 | yes |" in table and "| 130 | 35 |" in table
    # copies for the device tool, and nothing left in benchmarks/gpu
    assert {json_path.name, json_path.with_suffix(".md").name} <= {p.name for p in device_out.iterdir()}
    assert sorted(p.name for p in BENCH.iterdir() if p.name != "__pycache__") == [b for b in before if b != "__pycache__"]


def test_goals_are_judged_from_the_figures(measure):
    report = measure.Report(created="2026-01-01T00:00:00+00:00", dry_run=True, machine={"device": "cpu"}, network={},
                            sizes={})
    assert all(g["measured"] is None and g["met"] is None for g in measure.goals(report))
    report.training = [{"method": "gs", "nfe": 4, "checkpointing": False, "minutes_10k": 9.5, "peak_gb": 3.0},
                       {"method": "gas", "nfe": 10, "checkpointing": True, "minutes_10k": 50.0, "peak_gb": 9.0},
                       {"method": "gs", "nfe": 10, "checkpointing": True, "minutes_10k": 30.0, "peak_gb": 4.0}]
    report.sampling = [{"overhead_pct": 0.4}, {"overhead_pct": 1.5}]
    judged = {g["goal"]: (g["measured"], g["met"]) for g in measure.goals(report)}
    assert judged == {"gs_nfe4_10k_minutes": (9.5, True), "nfe10_checkpointed_peak_gb": (9.0, False),
                      "solver_overhead_pct": (1.5, False)}


def test_output_is_named_by_date_and_gpu(measure):
    report = measure.Report(created="2026-12-04T10:00:00+00:00", dry_run=False,
                            machine={"device": "cuda", "gpu": "NVIDIA H200 NVL"}, network={}, sizes={})
    assert measure.output_stem(report) == "2026-12-04-nvidia-h200-nvl"


def test_run_sh_refuses_a_dry_run_without_an_out_folder():
    done = subprocess.run(["bash", str(BENCH / "run.sh"), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "--dry-run needs --out" in done.stderr
