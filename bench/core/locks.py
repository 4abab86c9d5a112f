"""File locks that let several `gasbench run` processes share a results directory and a cache.

Work that writes shared files runs under an exclusive ``flock`` on a lock file next to them: a
result cell (its record, sample grid, learned solver state and fit checkpoint: ``<cell>/.lock``)
and a trajectory cache's shard (``<cache>/.shard-NNNNN.lock``). A second process asking for a held lock
waits, then finds the work done (a record to reuse, shards to read, a state to load). The kernel
releases a lock when its process exits, crashed or killed, so a lock never outlives its holder.

A lock file is removed by its holder on release. A waiter that then obtains the lock on the
removed file would not exclude a newcomer who creates the file anew, so after locking, a process
checks that the path still names the file it locked, and starts over if not.

Under torchrun the processes of one run act as one: rank 0 takes the lock and the others wait
for it at a barrier, so they all decide the same thing (reuse or compute) from the same files.
Where ``fcntl`` is missing (Windows) locks do nothing: one process per directory there.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from gasbench.core import distributed

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


def _acquire(path: Path, on_wait: Optional[Callable[[], None]]) -> int:
    """An open descriptor of ``path`` holding an exclusive flock on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None  # one message per wait, not per retry
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass  # the holder removed it while we waited: lock the file that is there now
        except BaseException:  # interrupted while waiting
            os.close(fd)
            raise
        os.close(fd)


def _try_acquire(path: Path) -> Optional[int]:
    """Like :func:`_acquire` without waiting: None when another process holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink(missing_ok=True)  # before unlocking: only the holder removes it
    finally:
        os.close(fd)


@contextmanager
def exclusive(directory: Path, on_wait: Optional[Callable[[], None]] = None, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold the lock of ``directory`` (its ``.lock`` file, or the lock file ``name`` for a part of
    it) for the block; ``on_wait`` is called once if another process holds it and this one waits.
    Every rank of a torchrun must enter."""
    path = Path(directory) / name
    fd = _acquire(path, on_wait) if fcntl is not None and distributed.is_main() else None
    try:
        distributed.barrier()
        yield
    finally:
        if fd is not None:
            _release(path, fd)


@contextmanager
def claim(directory: Path, name: str = LOCK_FILE) -> Iterator[bool]:
    """Hold the lock of ``directory`` (or its lock file ``name``) for the block if no other process
    holds it: yields True then, else False at once (``gasbench run --jobs``: the cell is another
    process's). One process only: under torchrun every rank would have to agree, so there it waits
    as :func:`exclusive` does and yields True."""
    if distributed.world_size() > 1:
        with exclusive(directory, name=name):
            yield True
        return
    path = Path(directory) / name
    fd = _try_acquire(path) if fcntl is not None else -1
    try:
        yield fd is not None
    finally:
        if fd is not None and fd >= 0:
            _release(path, fd)
