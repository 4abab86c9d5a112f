"""Result records: one ``metrics.json`` per (teacher, method, NFE) cell, written atomically.

Layout::

    <results>/<teacher>/<method>/nfe<N>/metrics.json   the record (schema below)
    <results>/<teacher>/<method>/nfe<N>/samples.png    a fixed-seed sample grid

The record schema is :class:`CellRecord` (version 2); tables leave out records of another schema
version, and a run stops at them, as at a damaged file (:func:`stored_record`). The same command
run twice writes the same records but for :data:`VOLATILE_FIELDS`.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, TypedDict

from gasbench.core.errors import GasbenchError
from gasbench.core.faults import fault_point

SCHEMA_VERSION = 2
TEACHER_LABEL = "teacher"  # the method name of the teacher's own row
# what two runs of the same command may record differently: clocks, dates, memory ("a.b": b inside a)
VOLATILE_FIELDS = ("created", "wall_time_s", "denoiser_time_s", "peak_memory_mb", "time_s", "training.wall_time_s")


class CellRecord(TypedDict, total=False):
    """One ``metrics.json``: a (teacher, method, NFE) cell, schema version :data:`SCHEMA_VERSION`.

    ``metrics_std`` and ``metrics_per_seed_set`` are there with several seed sets,
    ``nfe_measured`` and the timing fields on solver rows (not the teacher's own row),
    ``schedule_tuning`` when the schedule was tuned (:mod:`gasbench.tuning`)."""

    schema: int
    teacher: dict[str, Any]  # name, sha256 of the weights, shape, sigma range, reference solver
    method: str  # the cell's label (options after '+'), or TEACHER_LABEL for the teacher's row
    nfe: int  # requested
    nfe_measured: float  # denoiser calls per sample counted by the executor
    nfe_convention: str
    solver: dict[str, Any]  # resolved options, their hash, code_sha256; learned: state_sha256
    metrics: dict[str, float]  # name -> mean over seed sets
    metrics_std: dict[str, float]
    metrics_per_seed_set: dict[str, list[float]]
    metric_provenance: dict[str, Any]  # per metric: networks and their sha256, reference images
    num_samples: int  # over all seed sets
    seeds: list[list[int]]  # [first, last] per seed set
    conditions: str
    sample_checksums: dict[str, Any]  # what `gasbench verify` compares (gasbench.verify)
    wall_time_s: float
    denoiser_time_s: float
    peak_memory_mb: float
    time_s: dict[str, float]  # the cell's seconds per phase path (gasbench.core.phases)
    # a learned solver's FitResult (gasbench.solvers.fit): what it was given, how the fit went;
    # None for handcrafted solvers and the teacher row
    training: Optional[dict[str, Any]]
    schedule_tuning: dict[str, Any]
    run_config: dict[str, Any]  # the resolved run configuration and its command line
    versions: dict[str, Any]  # gasbench, torch, numpy, python, code revision
    environment: dict[str, Any]  # platform, device, CPU threads; GPU, CUDA and cuDNN on a GPU
    created: str
    identity: dict[str, Any]  # what a rerun must match to reuse the record (gasbench.reuse)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file.

    The temporary file, ``.<name>.<host>-<pid>.<random>.tmp`` beside ``path``, is never read (no
    reader looks for hidden ``.tmp`` names). One that a killed writer left behind is removed by the
    next write of ``path`` on the same host once that writer's process is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            fault_point(f"write-partial:{path.name}")
            fh.write(data[len(data) // 2 :])
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        fault_point(f"write-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a lost mount: say which file, keep the old one
            raise GasbenchError(
                f"cannot write {path}: {exc.strerror or exc}. The file there, if any, is unchanged. Free some "
                f"space or choose a writable directory (--results-dir; $GASBENCH_HOME for caches) and rerun: "
                f"completed cells are kept."
            ) from exc
        raise
    _remove_stale_temps(path)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-"


def _remove_stale_temps(path: Path) -> None:
    """Delete the temporary files of ``path`` whose writer, a process on this host, has exited:
    what a kill during :func:`write_atomic` leaves. Another host's or a live process's are kept."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    prefix = _temp_prefix(path)
    for temp in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = temp.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except OSError:  # the process exists under another user
            pass


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


def without_volatile(record: CellRecord) -> dict[str, Any]:
    """A copy of ``record`` without :data:`VOLATILE_FIELDS`: what two runs of one command agree on."""
    record = json.loads(json.dumps(record))
    for name in VOLATILE_FIELDS:
        *parents, key = name.split(".")
        holder = record
        for parent in parents:
            holder = holder.get(parent) or {}
        holder.pop(key, None)
    return record


def read_record(path: Path) -> CellRecord | None:
    """A record, or None if the file is missing or not a complete record of this schema."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION:
        return None
    return record


def stored_record(path: Path) -> CellRecord | None:
    """The record a run finds where it is about to write one: None when there is no file. A file
    that is not a record of this schema (damaged, or another gasbench's) is a GasbenchError, as
    a run never replaces what it cannot read without being told to (``--overwrite``)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GasbenchError(f"cannot read {path}: {exc.strerror or exc}.") from None
    try:
        record = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError too
        problem = f"is not a readable record ({exc})"
    else:
        schema = record.get("schema") if isinstance(record, dict) else None
        if schema == SCHEMA_VERSION:
            return record
        problem = f"is not a record of this gasbench's schema {SCHEMA_VERSION} (schema: {schema})"
    raise GasbenchError(
        f"{path} {problem}; gasbench does not replace it silently. Restore it, or pass --overwrite "
        f"to recompute the cell and replace it, or --results-dir DIR to write elsewhere."
    )


def iter_records(results_dir: Path) -> Iterator[CellRecord]:
    """Every record of this schema under ``results_dir``. A file that is not JSON at all stops
    here: records are written whole, so it was damaged, and a table without it would mislead."""
    for path in sorted(Path(results_dir).glob("*/*/nfe*/metrics.json")):
        record = read_record(path)
        if record is None:
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise GasbenchError(
                    f"{path} is not a readable record ({exc}); restore it, or delete it and rerun the "
                    f"`gasbench run` command that wrote it to recompute the cell."
                ) from None
            continue
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
