"""Sweeps over several processes: `--shard I/N` splits the cells deterministically, overlapping
shards compute each cell once (the per-cell locks), and `gasbench status` says what is recorded,
running or missing."""

import json
import os
import subprocess
import sys

import pytest
from helpers import gasbench

from gasbench.core import locks
from gasbench.core.records import without_volatile
from gasbench.jobs import parse_shard, shard_of

CELLS = ["run", "-d", "gmm", "-m", "euler,dpmpp3m,heun,ipndm", "--nfe", "4,6", "-n", "40", "--metrics", "rmse,fd"]
LABELS = [f"gmm/{m}/nfe{n}" for m in ("euler", "dpmpp3m", "heun", "ipndm") for n in (4, 6)]


def records(root):
    out = {}
    for path in sorted(root.glob("gmm/*/nfe*/metrics.json")):
        record = without_volatile(json.loads(path.read_text()))
        for key in ("command", "results_dir"):
            record["run_config"].pop(key)
        out[str(path.relative_to(root))] = record
    return out


def test_shards_split_the_cells_deterministically():
    cells = list(range(10))
    assert shard_of(cells, (1, 3)) == [0, 3, 6, 9] and shard_of(cells, (3, 3)) == [2, 5, 8]
    assert sorted(sum((shard_of(cells, (i, 4)) for i in range(1, 5)), [])) == cells
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(Exception, match="--shard expects I/N"):
            parse_shard(bad)


def test_two_shards_write_the_records_of_one_run(monkeypatch, capsys, tmp_path):
    for shard in ("1/2", "2/2"):
        code, _, err = gasbench(monkeypatch, capsys, *CELLS, "--shard", shard, "--results-dir", tmp_path / "sharded")
        assert code == 0, err
    assert gasbench(monkeypatch, capsys, *CELLS, "--results-dir", tmp_path / "whole")[0] == 0
    sharded, whole = records(tmp_path / "sharded"), records(tmp_path / "whole")
    assert len(whole) == 9 and sharded == whole  # 8 cells and the teacher row


def test_status_says_recorded_running_and_missing(monkeypatch, capsys, tmp_path):
    results = tmp_path / "results"
    assert gasbench(monkeypatch, capsys, *CELLS, "--shard", "1/2", "--results-dir", results)[0] == 0
    with locks.exclusive(results / "gmm" / "heun" / "nfe4"):  # as a process computing it would
        code, out, _ = gasbench(monkeypatch, capsys, "status", "--results-dir", results, "--all")
    assert code == 0
    states = dict(line.split("│")[1:3] for line in out.splitlines() if line.count("│") == 3)
    states = {cell.strip(): state.strip() for cell, state in states.items()}
    first = shard_of(LABELS, (1, 2))
    assert {c for c, s in states.items() if s == "recorded"} == set(first)
    assert states["gmm/heun/nfe4"] == ("recorded" if "gmm/heun/nfe4" in first else "running")
    assert {c for c, s in states.items() if s == "missing"} == set(LABELS) - set(first) - {"gmm/heun/nfe4"}
    assert "4 recorded" in out
    code, _, err = gasbench(monkeypatch, capsys, "status", "--results-dir", tmp_path / "never")
    assert code != 0 and "has written its plan" in err


@pytest.mark.slow
def test_overlapping_shards_compute_each_cell_once(tmp_path):
    """Four processes at once, shards 1/2, 2/2, 1/2, 2/2 on one directory: every cell's sampling
    is done (its progress line ends in 'done') by exactly one of them."""
    env = {**os.environ, "GASBENCH_JOBS": "1", "GASBENCH_PROGRESS_INTERVAL": "0.1"}
    results = tmp_path / "results"
    processes = [subprocess.Popen([sys.executable, "-m", "gasbench", *CELLS, "-n", "400", "--shard", shard,
                                   "--results-dir", str(results)], stderr=subprocess.PIPE, text=True, env=env)
                 for shard in ("1/2", "2/2", "1/2", "2/2")]
    logs = [p.communicate(timeout=600)[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), logs
    for label in LABELS:
        _, method, nfe = label.split("/")
        sampled = sum(line.endswith("done") and f"gmm: {method} NFE {nfe[3:]} " in line
                      for log in logs for line in log.splitlines())
        assert sampled == 1, (label, sampled)
