"""`gasbench run --jobs N`: N processes on one machine share a run's cells.

Every process runs the same command. Each takes the cells in the same order (the costliest
first) and claims a cell by taking its lock without waiting (:func:`gasbench.core.locks.claim`);
a cell another process holds is passed over, and once every cell has been tried, the ones passed
over are waited for and their records reused. So no cell is computed twice, the processes stay
busy until the last cells, and the records are those of a one-process run of the same command
with the same threads. The process the user started shows the progress and prints the tables; the
others (started by :func:`start_workers`) write their output to ``<results>/.jobs/``.

On 2 CPU cores two one-thread processes do more work than one two-thread process: the built-in
teachers' networks run batches of 20-24 small images during a fit, too little work to keep two
threads busy (docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from gasbench.core.errors import GasbenchError

WORKER_ENV = "GASBENCH_JOB_WORKER"  # set in the processes this module starts
COMMAND_ENV = "GASBENCH_JOB_COMMAND"  # the user's command line, recorded by every process
MAX_AUTO_JOBS = 4


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def resolve_jobs(text: str, device: str) -> int:
    """``--jobs``: a positive count, or ``auto``: one process per core up to :data:`MAX_AUTO_JOBS`
    on a CPU, one on a GPU (its processes would queue on the one device) or under torchrun."""
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
    return max(1, min(MAX_AUTO_JOBS, os.cpu_count() or 1))


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
