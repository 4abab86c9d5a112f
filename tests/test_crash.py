"""Crash safety: `gasbench run` killed with SIGKILL anywhere, then rerun, ends as an uninterrupted run.

Each killed run is a subprocess that kills itself at a fault point (:mod:`gasbench.core.faults`) in
trajectory generation, training, checkpointing, sampling, metric computation or inside a file
write. After the kill every file under the results directory and GASBENCH_HOME must be complete,
and after a rerun without the fault every file must equal an uninterrupted run's, except the
fields that measure wall-clock time or the interruption itself (:func:`_stable`).

By default one results directory is killed in every phase in turn (about a minute on one core);
`pytest -m crash` kills a fresh run at each of 42 fault points instead (about ten minutes; marked
``crash``, skipped by default: tests/conftest.py).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gasbench.core.errors import GasbenchError
from gasbench.core.records import read_record, without_volatile
from gasbench.core.registry import SOLVERS
from gasbench.core.seeds import SPLIT_STARTS
from gasbench.tables import render

# gs with 120 iterations checkpoints at iteration 100 (LearnedSolver.fit's checkpoint_every) and at
# the end; 48 training pairs keep its data small. Trajectory shards of 256 samples: the evaluation
# cache has 1 (64 seeds), the training cache 1, the validation cache 4 (1,000 seeds).
RUN = ["run", "-d", "gmm", "-m", "euler,gs", "--nfe", "3", "-n", "64", "--metrics", "rmse,fd",
       "--solver-arg", "iterations=120", "--solver-arg", "train_size=48", "--results-dir", "results"]
GS_CELL = Path("results/gmm/gs+iterations=120+train_size=48/nfe3")


def _point(spec: str):
    return pytest.param(spec, marks=pytest.mark.crash)


def _writes(name: str, *counts: int) -> list:
    return [_point(f"write-{stage}:{name}:{k}") for stage in ("partial", "rename") for k in counts]


FEATURES = "<reference features>"  # the cached features' file name holds a hash, found at run time
POINTS = [
    _point("trajectory-shard:1"), _point("trajectory-shard:2"), _point("trajectory-shard:4"),
    _point("fit-iteration:1"), _point("fit-iteration:100"), _point("fit-iteration:110"), _point("fit-iteration:120"),
    _point("sampling-batch:1"), _point("sampling-batch:2"),
    _point("metric:1"), _point("metric:2"), _point("metric:3"),
    *_writes("manifest.json", 1, 3), *_writes("shard-00000.safetensors", 1, 3), *_writes("shard-00002.safetensors", 1),
    *_writes("reference_samples.png", 1), *_writes("metrics.json", 1, 2, 3), *_writes("samples.png", 2),
    *_writes("fit-checkpoint.pt", 1, 2), *_writes("solver.safetensors", 1), *_writes("solver.json", 1),
    *_writes(FEATURES, 1),
]


def gasbench(workdir: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """`gasbench run` (RUN) in ``workdir``, its cache in ``workdir/home``, killed at ``fault``."""
    env = {k: v for k, v in os.environ.items() if k != "GASBENCH_FAULT"}
    env.update(GASBENCH_HOME=str(workdir / "home"), OMP_NUM_THREADS="1", GASBENCH_OFFLINE="1")
    if fault is not None:
        env["GASBENCH_FAULT"] = fault
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "gasbench", *RUN], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def killed(workdir: Path, fault: str) -> None:
    done = gasbench(workdir, fault)
    assert done.returncode == -signal.SIGKILL, f"{fault} was not reached (exit {done.returncode}):\n{done.stderr[-2000:]}"
    assert_complete(workdir)


def completed(workdir: Path) -> None:
    done = gasbench(workdir)
    assert done.returncode == 0, done.stderr[-3000:]


def _files(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob("*") if p.is_file())


def _read(path: Path):
    """A file's content as far as the runs must agree on it; raises if the file is incomplete."""
    if path.suffix == ".json":
        return _stable(json.loads(path.read_text()))
    if path.suffix == ".safetensors":
        return {k: _sha(v.numpy().tobytes()) for k, v in load_file(path).items()}
    if path.suffix == ".npz":  # a zip that stamps its write time: compare the arrays
        with np.load(path, allow_pickle=False) as data:
            return {k: _sha(data[k].tobytes()) for k in data.files}
    if path.suffix == ".png":
        with Image.open(path) as image:
            image.load()
    if path.suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    return _sha(path.read_bytes())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stable(obj):
    """A JSON file without what differs between an interrupted and an uninterrupted run by nature:
    the fields any two runs may differ in (clocks, dates, peak memory: VOLATILE_FIELDS) and the
    iteration a fit resumed from."""
    if not isinstance(obj, dict):
        return obj
    stable = without_volatile(obj)
    (stable.get("training") or {}).pop("resumed_at", None)
    return stable


def assert_complete(workdir: Path) -> None:
    """What a killed run leaves: every file under its final name whole, records readable."""
    for path in _files(workdir):
        if not path.name.startswith("."):
            _read(path)
            if path.name == "metrics.json":
                assert read_record(path) is not None, path


def snapshot(workdir: Path) -> dict[str, object]:
    """Every file a run leaves (records, grids, solver states, caches), by path, without hidden files."""
    return {str(p.relative_to(workdir)): _read(p) for p in _files(workdir) if not p.name.startswith(".")}


def table(workdir: Path) -> str:
    return render(workdir / "results", ["rmse", "fd"], "csv")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    completed(workdir)
    return workdir


def assert_same_as(workdir: Path, reference: Path) -> None:
    assert snapshot(workdir) == snapshot(reference)
    assert table(workdir) == table(reference)
    # the rerun removed the temporary files its killed predecessor left (same host, writer gone)
    assert not [p for p in _files(workdir) if p.suffix == ".tmp"]


@pytest.mark.parametrize("fault", POINTS)
def test_killed_run_resumes_to_the_same_records(fault, uninterrupted, tmp_path):
    if FEATURES in fault:
        [features] = (uninterrupted / "home" / "reference_features").rglob("*.npz")
        fault = fault.replace(FEATURES, features.name)
    killed(tmp_path, fault)
    completed(tmp_path)
    assert_same_as(tmp_path, uninterrupted)
    # a fit killed after its checkpoint at iteration 100 (or at 120, the last) resumed from it
    resumed = {"fit-iteration:110": 100, "fit-iteration:120": 100, "write-rename:fit-checkpoint.pt:2": 100,
               "write-partial:solver.safetensors:1": 120, "write-rename:solver.json:1": 120}
    if fault in resumed:
        assert json.loads((tmp_path / GS_CELL / "metrics.json").read_text())["training"]["resumed_at"] == resumed[fault]


@pytest.mark.slow
def test_run_survives_a_kill_in_every_phase_in_turn(uninterrupted, tmp_path):
    """One results directory killed six times, each rerun getting further: inside the write of the
    metrics' cached reference features, trajectories, training (then resumed from its checkpoint),
    the solver state, sampling and the record's write."""
    [features] = (uninterrupted / "home" / "reference_features").rglob("*.npz")
    killed(tmp_path, f"write-partial:{features.name}:1")  # the metrics' check, before any solve
    assert not list(tmp_path.rglob("*.safetensors"))
    killed(tmp_path, "trajectory-shard:3")  # the evaluation and training caches, 1 of 4 validation shards
    assert len(list((tmp_path / "home").rglob("shard-*.safetensors"))) == 3
    killed(tmp_path, "fit-iteration:110")
    checkpoint = torch.load(tmp_path / GS_CELL / "fit-checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == 100
    killed(tmp_path, "write-rename:solver.json:1")  # resumed at 100, finished, killed saving its state
    assert (tmp_path / GS_CELL / "solver.safetensors").is_file() and not (tmp_path / GS_CELL / "solver.json").exists()
    killed(tmp_path, "sampling-batch:1")  # the fit's final checkpoint resumed (nothing to train), state saved
    assert (tmp_path / GS_CELL / "solver.json").is_file() and not (tmp_path / GS_CELL / "fit-checkpoint.pt").exists()
    killed(tmp_path, "write-partial:metrics.json:1")  # half the gs record in a temporary file
    [partial] = (tmp_path / GS_CELL).glob(".metrics.json.*.tmp")
    with pytest.raises(ValueError):
        json.loads(partial.read_text())
    assert not (tmp_path / GS_CELL / "metrics.json").exists()
    completed(tmp_path)
    assert_same_as(tmp_path, uninterrupted)
    assert json.loads((tmp_path / GS_CELL / "metrics.json").read_text())["training"]["resumed_at"] == 120


def test_leftover_temporary_and_truncated_files_are_not_read_as_complete(uninterrupted, tmp_path):
    """Temporary files are never renamed into place or read, whatever they hold; a truncated final
    file (a non-atomic writer, a damaged disk) is recomputed; the rerun cleans up only the
    temporary files of writers that are gone."""
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    host = socket.gethostname()

    def temp(final: Path, pid: int, data: bytes) -> Path:
        path = final.parent / f".{final.name}.{host}-{pid}.abc123.tmp"
        path.write_bytes(data)
        return path

    cell = tmp_path / GS_CELL
    record = (cell / "metrics.json").read_bytes()
    assert b'"rmse": 0.' in record
    (cell / "metrics.json").unlink()
    # a complete but wrong record in a dead writer's temporary file: a reader that took it would show rmse 123
    stale = [temp(cell / "metrics.json", finished.pid, record.replace(b'"rmse": 0.', b'"rmse": 123.'))]
    # the solver state: its configuration half in a temporary file, the final file gone; its
    # parameters truncated in place (either way the fit is redone)
    state = cell / "solver.json"
    stale.append(temp(state, finished.pid, state.read_bytes()[:100]))
    state.unlink()
    (cell / "solver.safetensors").write_bytes((cell / "solver.safetensors").read_bytes()[:50])
    # a validation shard: gone, a partial temporary file in its place (regenerated for the refit)
    [validation] = [m.parent for m in (tmp_path / "home" / "trajectories").rglob("manifest.json")
                    if json.loads(m.read_text())["seeds"][0] == SPLIT_STARTS["validation"]]
    shard = validation / "shard-00000.safetensors"
    stale.append(temp(shard, finished.pid, shard.read_bytes()[:1000]))
    shard.unlink()
    # temporary files of a live process (this one) and of another host are not this run's to remove
    kept = [temp(cell / "metrics.json", os.getpid(), b"{"),
            cell / f".metrics.json.another-host-{finished.pid}.abc123.tmp"]
    kept[1].write_bytes(b"{")

    completed(tmp_path)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    for path in kept:
        path.unlink()
    assert_same_as(tmp_path, uninterrupted)


def test_a_damaged_checkpoint_stops_the_fit_with_a_clear_message(gmm, gmm_pairs, tmp_path):
    checkpoint = tmp_path / "fit-checkpoint.pt"
    SOLVERS.get("gs")(iterations=2).fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    with pytest.raises(GasbenchError, match="fit-checkpoint.pt cannot be read .*delete it"):
        SOLVERS.get("gs")(iterations=4).fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=checkpoint)
