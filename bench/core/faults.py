"""Fault injection: kill the process at a named point, to test that `gasbench run` survives it.

The code calls :func:`fault_point` at the places where a crash could leave work half done. It
does nothing unless the environment variable ``GASBENCH_FAULT=<point>:<k>`` was set when gasbench
was imported; then the process sends itself SIGKILL (no cleanup, no ``finally``, no flush) the
``k``-th time it reaches ``<point>``. ``tests/test_crash.py`` kills runs this way and checks that
rerunning the same command finishes with the records of an uninterrupted run.

The points:

* ``trajectory-shard``: after each trajectory-cache shard is written (reference, train and
  validation trajectories alike);
* ``fit-iteration``: after each iteration of a learned solver's fit, once that iteration's
  checkpoint, if it has one, is written;
* ``sampling-batch``: after each batch of samples is solved;
* ``metric``: after a cell's samples (or the teacher row's) are solved, before they are scored;
* ``write-partial:<file name>``: inside :func:`gasbench.core.records.write_atomic`, with half of the
  file's bytes in its temporary file (e.g. ``write-partial:metrics.json``,
  ``write-partial:fit-checkpoint.pt``, ``write-partial:shard-00001.safetensors``);
* ``write-rename:<file name>``: there too, with the temporary file complete but not yet renamed.
"""

from __future__ import annotations

import os
import signal

from gasbench.core.errors import GasbenchError

ENV = "GASBENCH_FAULT"


def _parse(spec: str | None) -> dict[str, int]:
    if not spec:
        return {}
    point, _, count = spec.rpartition(":")
    if not point or not count.isdigit() or int(count) < 1:
        raise GasbenchError(f"{ENV}={spec!r}: expected <point>:<k> with k >= 1, e.g. fit-iteration:3.")
    return {point: int(count)}


_remaining = _parse(os.environ.get(ENV))


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL if ``name`` is the armed point and this is its k-th visit."""
    if name in _remaining:
        _remaining[name] -= 1
        if _remaining[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
