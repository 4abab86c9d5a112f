"""Where a run's time goes: wall-clock seconds per named phase, summed over the process.

Phases nest, and a phase is counted under the path of the phases around it, so the network's
forward passes of a fit step (``fit_step/network_forward``) are told apart from those of
sampling (``sampling/network_forward``). The runner stores each cell's share in its record
(``time_s``, :mod:`gasbench.core.records`) and `gasbench bench profile` tabulates them. A
timer costs two ``perf_counter`` calls, nothing next to a network pass.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

_seconds: defaultdict[str, float] = defaultdict(float)
_stack: list[str] = []


@contextlib.contextmanager
def phase(name: str):
    """Count the wall time of the block under ``name`` inside the phases already open."""
    _stack.append(name)
    path = "/".join(_stack)
    start = time.perf_counter()
    try:
        yield
    finally:
        _seconds[path] += time.perf_counter() - start
        _stack.pop()


def totals() -> dict[str, float]:
    """Seconds per phase path so far in this process."""
    return dict(_seconds)


def since(before: dict[str, float]) -> dict[str, float]:
    """Seconds per phase path spent after ``before`` (a :func:`totals`), rounded to 10 ms."""
    now = totals()
    return {path: round(now[path] - before.get(path, 0.0), 2) for path in sorted(now) if now[path] > before.get(path, 0.0)}
