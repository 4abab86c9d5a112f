"""Sharing a run's cells between processes: `gasbench run --jobs N` on one machine, `--shard I/N`
across machines (a Slurm array), and `gasbench status`, which shows each cell's state.

Every process runs the same command. Each takes the cells in the same order (the costliest
first) and claims a cell by taking its lock without waiting (:func:`gasbench.core.locks.claim`);
a cell another process holds is passed over, and once every cell has been tried, the ones passed
over are waited for and their records reused. So no cell is computed twice, the processes stay
busy until the last cells, and the records are those of a one-process run of the same command
with the same threads. The process the user started shows the progress and prints the tables; the
others (started by :func:`start_workers`) write their output to ``<results>/.jobs/``.

``--shard I/N`` keeps every N-th cell of the run's list (cells I-1, I-1+N, ...: the same split on
every machine), so N independent processes on a shared results directory cover a sweep once; with
the claims above, overlapping shards still compute each cell once.

On 2 CPU cores two one-thread processes do more work than one two-thread process: the built-in
teachers' networks run batches of 20-24 small images during a fit, too little work to keep two
threads busy (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from gasbench.core import locks
from gasbench.core.errors import GasbenchError
from gasbench.core.records import read_record, write_json_atomic

WORKER_ENV = "GASBENCH_JOB_WORKER"  # set in the processes this module starts
COMMAND_ENV = "GASBENCH_JOB_COMMAND"  # the user's command line, recorded by every process
MAX_AUTO_JOBS = 4


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def resolve_jobs(text: str, device: str, cells: int) -> int:
    """``--jobs``: a positive count, or ``auto``: one process per core up to :data:`MAX_AUTO_JOBS`
    and the run's ``cells`` on a CPU, one on a GPU (its processes would queue on the one device)
    or under torchrun."""
    if text != "auto":
        try:
            jobs = int(text)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise GasbenchError(f"--jobs expects a positive integer or 'auto', got {text!r}.")
        return jobs
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpu or "WORLD_SIZE" in os.environ or is_worker():
        return 1
    return max(1, min(MAX_AUTO_JOBS, os.cpu_count() or 1, cells))


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def start_workers(argv: list[str], jobs: int, threads: int, results_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``jobs - 1`` processes running ``gasbench <argv>`` with ``--jobs 1 --threads
    threads``; each one's output goes to ``<results_dir>/.jobs/worker-<i>.log``."""
    logs = Path(results_dir) / ".jobs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, WORKER_ENV: "1", COMMAND_ENV: " ".join(["gasbench", *argv])}
    workers = []
    for index in range(1, jobs):
        log = logs / f"worker-{index}.log"
        with open(log, "w") as out:
            command = [sys.executable, "-m", "gasbench", *argv, "--jobs", "1", "--threads", str(threads)]
            workers.append((subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env), log))
    return workers


def finish_workers(workers: list[tuple[subprocess.Popen, Path]]) -> None:
    """Wait for the workers; one that failed is a GasbenchError quoting the end of its log (the
    cells it finished are recorded, and rerunning the command computes the rest)."""
    failed = []
    for process, log in workers:
        if process.wait() != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            failed.append(f"{log} (exit {process.returncode}):\n    " + "\n    ".join(tail))
    if failed:
        raise GasbenchError("a --jobs worker process failed; its recorded cells are kept, rerun the command to "
                            "compute the rest.\n" + "\n".join(failed))


def stop_workers(workers: list[tuple[subprocess.Popen, Path]]) -> None:
    """End the workers when the user's process stops early (an error or Ctrl-C)."""
    for process, _ in workers:
        if process.poll() is None:
            process.terminate()
    for process, _ in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class CellCount:
    """The run-level progress bar of a command whose cells several processes share: a cell counts
    as done once its record is written by any of them during this command (so the bar's speed,
    and its ETA, are the whole command's), and a record from before the command, reused, leaves
    the total."""

    def __init__(self, progress, task, record_paths: list[Path]):
        self.progress, self.task, self.paths = progress, task, record_paths
        self.since = time.time()
        self.reused = 0

    def reuse(self, path: Path) -> None:
        """A cell's record was reused: one cell less to do if it predates the command."""
        if path.stat().st_mtime < self.since:
            self.reused += 1
            self.progress.update(self.task, total=len(self.paths) - self.reused)

    def refresh(self) -> None:
        written = sum(1 for p in self.paths if p.is_file() and p.stat().st_mtime >= self.since)
        self.progress.update(self.task, completed=written)


def costliest_first(cells: list) -> list[tuple[int, object]]:
    """(index, cell) with learned cells before handcrafted ones and higher NFE first, so the
    processes of a ``--jobs`` run finish together rather than wait on one long fit at the end."""
    return sorted(enumerate(cells), key=lambda item: (not item[1].solver.learned, -item[1].nfe))


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with 1 <= I <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise GasbenchError(f"--shard expects I/N with 1 <= I <= N (e.g. 2/4 for the second of four), got {text!r}.")
    return index, count


def shard_of(cells: list, shard: tuple[int, int]) -> list:
    """The cells of shard ``(I, N)``: every N-th from the (I-1)-th, in the run's order."""
    index, count = shard
    return cells[index - 1 :: count]


PLANS = ".plans"  # <results>/.plans/<digest>.json: the cells each command set out to compute


def write_plan(results_dir: Path, teacher: str, labels: list[tuple[str, int]], command: str | None) -> None:
    """Record the cells (label, NFE) a run of ``teacher`` set out to compute, all shards' (so
    `gasbench status` can say which are missing); the same cells give the same file."""
    cells = sorted(f"{teacher}/{label}/nfe{nfe}" for label, nfe in labels)
    digest = hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]
    path = Path(results_dir) / PLANS / f"{digest}.json"
    if not path.is_file():
        write_json_atomic(path, {"command": command, "cells": cells})


def cell_states(results_dir: Path) -> list[dict]:
    """Per planned cell of every run started on ``results_dir``: ``recorded`` (a record is
    there), ``running`` (another process holds its lock) or ``missing``; with the plan's command."""
    rows = []
    for plan_path in sorted((Path(results_dir) / PLANS).glob("*.json")):
        plan = json.loads(plan_path.read_text())
        for cell in plan["cells"]:
            directory = Path(results_dir) / cell
            if read_record(directory / "metrics.json") is not None:
                state = "recorded"
            else:
                with locks.claim(directory) as free:
                    state = "missing" if free else "running"
            rows.append({"command": plan["command"], "cell": cell, "state": state})
    return rows
