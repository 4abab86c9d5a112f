"""Progress display for long work: rich bars on a terminal, plain lines everywhere else.

Rich draws a live bar only on a terminal; with output going to a file (nohup, CI, Slurm) it
would show nothing until the end. There :class:`Bars` prints one plain line per running task
every ``GASBENCH_PROGRESS_INTERVAL`` seconds (default 30) and one when a task completes:

    [18:03:05] digits: gs NFE 4  120/300 (40%)  loss 0.0412  elapsed 0:01:10  eta 0:01:45
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

INTERVAL_ENV = "GASBENCH_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between plain progress lines: ``$GASBENCH_PROGRESS_INTERVAL`` or 30."""
    try:
        return max(0.05, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _clock(seconds: Optional[float]) -> str:
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


def plain_line(task: Task) -> str:
    """One task's state as a line of text (the non-terminal form of its bar)."""
    done = f"{task.completed:.0f}/{task.total:.0f} ({task.percentage:.0f}%)" if task.total else f"{task.completed:.0f}"
    fields = "".join(f"  {k} {v:.4g}" if isinstance(v, float) else f"  {k} {v}" for k, v in task.fields.items())
    eta = "done" if task.finished else f"eta {_clock(task.time_remaining)}"
    description = Text.from_markup(task.description).plain
    return f"[{time.strftime('%H:%M:%S')}] {description}  {done}{fields}  elapsed {_clock(task.elapsed)}  {eta}"


class Bars(Progress):
    """A rich :class:`~rich.progress.Progress` (description, bar, M/N, elapsed, ETA, then any
    ``extra`` columns) that, when its console is not a terminal, prints :func:`plain_line`\\ s at a
    steady interval instead of drawing; ``enabled=False`` shows nothing at all."""

    def __init__(self, *extra: ProgressColumn, console: Optional[Console] = None, enabled: bool = True,
                 transient: bool = False):
        console = console or Console(stderr=True)
        self.plain = enabled and not console.is_terminal
        # sized to fit 80 columns: a long description is cut with an ellipsis, never the counts
        description = TextColumn("{task.description}", table_column=Column(max_width=34, no_wrap=True, overflow="ellipsis"))
        columns = (description, BarColumn(bar_width=10), MofNCompleteColumn(), *extra,
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        # speed (so ETA) averaged over the whole task, not rich's last 30 s: a run's cells and a
        # fit's iterations can each take longer than that
        super().__init__(*columns, console=console, transient=transient, disable=not enabled or self.plain,
                         speed_estimate_period=24 * 3600)
        self._announced: set[TaskID] = set()
        self._stopped = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    def start(self) -> None:
        super().start()
        if self.plain and self._ticker is None:
            self._stopped.clear()
            self._ticker = threading.Thread(target=self._tick, name="gasbench-progress", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._stopped.set()
            self._ticker.join()
            self._ticker = None
        super().stop()

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._announce_finished()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._announce_finished()

    def _tick(self) -> None:
        while not self._stopped.wait(interval_s()):
            for task in self.tasks:
                if task.started and not task.finished:
                    self.console.print(plain_line(task), highlight=False, markup=False, soft_wrap=True)

    def _announce_finished(self) -> None:
        if not self.plain:
            return
        for task in self.tasks:
            if task.finished and task.id not in self._announced:
                self._announced.add(task.id)
                self.console.print(plain_line(task), highlight=False, markup=False, soft_wrap=True)


def announce_wait(console: Console, directory, what: str):
    """The ``on_wait`` of :func:`gasbench.core.locks.exclusive`: what a run prints when another
    process holds the lock of ``directory`` (``what`` it is doing there)."""
    return lambda: console.print(f"{directory}: another gasbench process is {what}; waiting for it")
