"""Two `gasbench run` processes on one results directory and one GASBENCH_HOME: both finish, the
learned fit runs once, every trajectory shard is generated once, and the records are a single
run's. A lock dies with its process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from gasbench.core import locks
from gasbench.core.records import cell_dir, read_record, without_volatile
from gasbench.trajectories import TrajectoryCache

GS = "gs+batch_size=8+iterations=6+train_size=32"
RUN = ["run", "-d", "gmm", "-m", "euler,gs", "--nfe", "3", "-n", "40", "--batch-size", "16", "--metrics", "rmse,fd",
       "--solver-arg", "iterations=6", "--solver-arg", "train_size=32", "--solver-arg", "batch_size=8",
       "--results-dir", "results"]
# gasbench's CLI, with every fit and every trajectory shard solved logged to $EVENTS
COUNTING = """
import os, sys
from gasbench.solvers.learned import LearnedSolver
from gasbench.trajectories import TrajectoryCache

def counted(cls, name):
    original = getattr(cls, name)
    def wrapper(self, *args, **kwargs):
        with open(os.environ["EVENTS"], "a") as log:
            log.write(f"{name} {os.getpid()}\\n")
        return original(self, *args, **kwargs)
    setattr(cls, name, wrapper)

counted(LearnedSolver, "fit")
counted(TrajectoryCache, "_solve")
from gasbench.cli import main
sys.argv = ["gasbench", *sys.argv[1:]]
main()
"""


def _wait_for(condition, what: str, processes, logs, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        finished = [p for p in processes if p.poll() is not None]
        if finished or time.monotonic() > deadline:
            raise AssertionError(f"{what}: " + "\n".join(log.read_text()[-2000:] for log in logs))
        time.sleep(0.1)


def test_two_runs_share_the_work(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "count.py").write_text(COUNTING)
    events = shared / "events.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GASBENCH_OFFLINE": "1", "GASBENCH_HOME": str(shared / "home"),
           "EVENTS": str(events)}
    gs_cell = cell_dir(shared / "results", "gmm", GS, 3)
    logs = [shared / f"run{i}.log" for i in range(2)]
    # hold the learned cell's lock until both runs wait for it, so they contend for its fit
    with locks.exclusive(gs_cell):
        processes = [subprocess.Popen([sys.executable, "count.py", *RUN], cwd=shared, env=env,
                                      stdout=subprocess.DEVNULL, stderr=log.open("w")) for log in logs]
        try:
            _wait_for(lambda: all(f"{GS}/nfe3: another gasbench process is computing this cell" in log.read_text() for log in logs),
                      "both runs should wait for the held cell", processes, logs)
        except BaseException:
            for p in processes:
                p.kill()
            raise
    for p, log in zip(processes, logs):
        assert p.wait(timeout=120) == 0, log.read_text()[-3000:]

    counts = {}
    for line in events.read_text().splitlines():
        counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    shards = sorted((shared / "home" / "trajectories").rglob("shard-*.safetensors"))
    assert counts == {"fit": 1, "_solve": len(shards)}  # one fit; each shard solved once
    assert not list((shared / "results").rglob("*.lock")) and not list((shared / "home").rglob("*.lock"))

    # a single run in a directory of its own writes the same records
    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.chdir(alone)
    monkeypatch.setenv("GASBENCH_HOME", str(alone / "home"))
    monkeypatch.setattr(sys, "argv", ["gasbench", *RUN])
    torch.set_num_threads(1)
    from gasbench.cli import main

    main()
    paths = sorted(p.relative_to(alone) for p in (alone / "results").rglob("metrics.json"))
    assert len(paths) == 3 and paths == sorted(p.relative_to(shared) for p in (shared / "results").rglob("metrics.json"))
    for path in paths:
        assert read_record(shared / path) is not None
        assert without_volatile(read_record(shared / path)) == without_volatile(read_record(alone / path)), path
    state = Path("results") / "gmm" / GS / "nfe3" / "solver.safetensors"
    assert (shared / state).read_bytes() == (alone / state).read_bytes()


def test_a_lock_dies_with_its_process(tmp_path):
    holder = ("import os, sys\nfrom gasbench.core import locks\nheld = locks.exclusive(sys.argv[1])\nheld.__enter__()\n"
              "print('held', flush=True)\nos.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", holder, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout == "held\n" and done.returncode == -9
    assert (tmp_path / locks.LOCK_FILE).exists()  # left behind by the killed holder, but unlocked
    waited = []
    with locks.exclusive(tmp_path, on_wait=lambda: waited.append(True)):
        assert not waited
    assert not (tmp_path / locks.LOCK_FILE).exists()


def test_a_cache_is_filled_shard_by_shard(tmp_path, gmm):
    """A process filling a cache solves the shards no one else holds instead of waiting for the
    whole cache; it then waits for the held shard, and solves it itself when its holder left it
    unwritten (crashed). The shards are those of a cache filled alone."""
    cache = TrajectoryCache(gmm, tuple(range(100, 140)), shard_size=10, root=tmp_path / "shared")
    waited, done = threading.Event(), []
    with locks.claim(cache.directory, TrajectoryCache._lock_name(0)) as mine:
        assert mine
        worker = threading.Thread(target=lambda: done.append(cache.generate(on_wait=waited.set)))
        worker.start()
        assert waited.wait(timeout=60), "the held shard is waited for once the free ones are written"
        assert [cache.shard_path(i).is_file() for i in range(4)] == [False, True, True, True]
    worker.join(timeout=60)
    assert done and cache.shard_path(0).is_file()
    alone = TrajectoryCache(gmm, cache.seeds, shard_size=10, root=tmp_path / "alone")
    alone.generate()
    for i in range(4):
        assert cache.shard_path(i).read_bytes() == alone.shard_path(i).read_bytes()
    assert not list(cache.directory.glob("*.lock"))
