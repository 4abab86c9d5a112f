"""Result records: one ``metrics.json`` per (teacher, method, NFE) cell, written atomically.

Layout::

    <results>/<teacher>/<method>/nfe<N>/metrics.json   the record (schema below)
    <results>/<teacher>/<method>/nfe<N>/samples.png    a fixed-seed sample grid

Record schema (version 2): ``teacher`` (name, sha256, shape, reference solver), ``method``
(``teacher`` for the teacher's own row), ``nfe`` (requested), ``nfe_measured`` (denoiser calls per
sample counted by the executor), ``solver`` (resolved options and their hash), ``metrics`` (name ->
mean over seed sets), ``metrics_std`` and ``metrics_per_seed_set`` (with several seed sets),
``metric_provenance`` (per metric: networks and their sha256, reference images), ``num_samples``
(all seed sets), ``seeds`` ([[first, last], ...] per seed set), ``conditions``, ``wall_time_s``,
``peak_memory_mb``, ``training`` (null for handcrafted solvers), ``versions`` (gasbench, torch,
python, code revision), ``created``. Records of another schema version are ignored (recomputed).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

from gasbench.errors import GasbenchError

SCHEMA_VERSION = 2
TEACHER_LABEL = "teacher"  # the method name of the teacher's own row


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def cell_dir(results_dir: Path, teacher: str, method: str, nfe: int) -> Path:
    return Path(results_dir) / teacher / method / f"nfe{nfe}"


def ensure_writable(results_dir: Path) -> None:
    """Fail early, before any work, if records cannot be written under ``results_dir``."""
    try:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".probe-"):
            pass
    except OSError as exc:
        raise GasbenchError(
            f"cannot write results to '{results_dir}': {exc.strerror or exc}. "
            f"Choose a writable directory with --results-dir."
        ) from None


def read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None if the file is missing or not a complete record of this schema."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION:
        return None
    return record


def iter_records(results_dir: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(Path(results_dir).glob("*/*/nfe*/metrics.json")):
        record = read_record(path)
        if record is not None:
            yield record


def code_revision() -> str | None:
    """The git revision of the source tree, with '+dirty' if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
