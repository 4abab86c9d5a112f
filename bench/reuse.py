"""When a run reuses a stored record and when it stops instead of replacing one.

A record's ``identity`` names its solve (teacher weights, solver configuration and code, or the
teacher's reference solver) and its evaluation (seed sets, metrics). A run reuses a record of the
same identity, or of the same solve evaluated on more (its seed sets first, at least its metrics);
any other record in a cell it would write stops the run before any work, with one message, unless
``--overwrite`` says to replace it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, CellRecord, cell_dir, stored_record
from gasbench.metrics import Metric


def _seed_pairs(seed_sets) -> list[list[int]]:
    return [[s[0], s[-1]] for s in seed_sets]


def teacher_identity(teacher, metrics: list[Metric], seed_sets) -> Optional[dict[str, Any]]:
    """What the teacher row's record must match to be reused; None when there is no teacher row."""
    unpaired = sorted(m.name for m in metrics if not m.paired)
    if not unpaired:
        return None
    return {"teacher_sha256": teacher.weights_sha256, "reference": teacher.reference.to_dict(),
            "seeds": _seed_pairs(seed_sets), "metrics": unpaired}


def cell_identity(teacher, cell, metrics: list[Metric], seed_sets) -> dict[str, Any]:
    """What a cell's record must match to be reused: the solve (teacher weights, solver
    configuration and code) and its evaluation (seeds, metrics)."""
    return {"teacher_sha256": teacher.weights_sha256, "solver_hash": cell.solver.config_hash(teacher),
            "solver_code": cell.solver.code_sha256(),
            "seeds": _seed_pairs(seed_sets), "metrics": sorted(m.name for m in metrics)}


def relation(existing: Optional[dict[str, Any]], identity: dict[str, Any]) -> str:
    """How a stored record stands to the one a run would write: ``new`` (none stored), ``same``,
    ``covers`` (the same solve evaluated on this run's seed sets, first, and more, on at least its
    metrics), ``conflict`` (the same solve evaluated otherwise) or ``other`` (another solve: other
    teacher weights, solver configuration or solver code, or no solver code recorded). A run
    reuses ``same`` and ``covers`` and replaces nothing without ``--overwrite``."""
    if existing is None:
        return "new"
    stored = existing.get("identity") or {}
    if _difference(stored, identity):
        return "other"
    if stored == identity:
        return "same"
    seeds = identity["seeds"]
    if stored["seeds"][: len(seeds)] == seeds and set(identity["metrics"]) <= set(stored["metrics"]):
        return "covers"
    return "conflict"


def _describe_evaluation(identity: dict[str, Any]) -> str:
    sets = identity["seeds"]
    return (f"{len(sets)} seed set{'s' if len(sets) > 1 else ''} ({', '.join(f'{a}-{b}' for a, b in sets)}) "
            f"and metrics {', '.join(identity['metrics'])}")


def _difference(stored: dict[str, Any], identity: dict[str, Any]) -> str:
    """What the solve of a stored record's ``identity`` was made with that this run's is not, in
    words; '' when it is the same solve (it may be evaluated otherwise)."""
    if stored.get("teacher_sha256") != identity["teacher_sha256"]:
        return f"other teacher weights (sha256 {stored.get('teacher_sha256')}, now {identity['teacher_sha256']})"
    if "solver_code" in identity and "solver_code" not in stored:
        return ("solver code it does not name: it was written before gasbench recorded the sha256 of a "
                "solver's code, so whether that code changed since is unknown")
    if stored.get("solver_code") != identity.get("solver_code"):
        return (f"other solver code (sha256 {stored['solver_code']}, now {identity['solver_code']}): the "
                f"solver's source files changed since")
    if any(stored.get(k) != v for k, v in identity.items() if k not in ("seeds", "metrics")):
        return "another solver configuration" if "solver_hash" in identity else "another reference solver"
    return ""


def _conflict_error(conflicts: list[tuple[Path, dict, dict]]) -> GasbenchError:
    """One message for the cells whose records a run would replace: the first such record made by
    another solve if any (other code, weights, configuration), else the first evaluated otherwise."""
    path, stored, identity = min(conflicts, key=lambda c: not _difference(c[1], c[2]))
    other = _difference(stored, identity)
    if other:
        found = (f"{path.parent} already holds a record made with {other}" if len(conflicts) == 1 else
                 f"{len(conflicts)} cells already hold records this run would not reproduce ({path.parent}: made "
                 f"with {other})")
    else:
        evaluations = f"on {_describe_evaluation(stored)}, where this run asks for {_describe_evaluation(identity)}"
        found = (f"{path.parent} already holds a record of the same teacher and solver evaluated {evaluations}"
                 if len(conflicts) == 1 else
                 f"{len(conflicts)} cells already hold records of the same teacher and solver evaluated otherwise "
                 f"than this run asks ({path.parent} {evaluations})")
    return GasbenchError(
        f"{found}; gasbench does not replace a record silently. Pass --overwrite to recompute and replace it "
        f"(trained solver states of the same configuration are reused), or --results-dir DIR to write elsewhere."
    )


def check_existing(results_dir: Path, overwrite: bool, teacher, metrics: list[Metric], cells, seed_sets,
                   console: Console) -> None:
    """Before any work: stop if a cell holds a record this run would replace (:func:`relation`:
    ``conflict`` or ``other``; a damaged file, :func:`~gasbench.core.records.stored_record`), and say
    how many records covering more than asked will be reused."""
    if overwrite:
        return
    wanted = [(cell_dir(results_dir, teacher.name, cell.label, cell.nfe), cell_identity(teacher, cell, metrics, seed_sets))
              for cell in cells]
    teacher_row = teacher_identity(teacher, metrics, seed_sets)
    if teacher_row is not None:
        wanted.append((cell_dir(results_dir, teacher.name, TEACHER_LABEL, teacher.reference.nfe), teacher_row))
    conflicts, covering = [], 0
    for directory, identity in wanted:
        existing = stored_record(directory / "metrics.json")
        stands = relation(existing, identity)
        covering += stands == "covers"
        if stands in ("conflict", "other"):
            conflicts.append((directory / "metrics.json", existing.get("identity") or {}, identity))
    if conflicts:
        raise _conflict_error(conflicts)
    if covering:
        console.print(f"{covering} cell(s) already hold records over more seed sets or metrics than asked; they are "
                      f"reused as they are (--overwrite recomputes them)")


def reusable(path: Path, identity: dict, overwrite: bool) -> Optional[CellRecord]:
    """The stored record if it answers ``identity`` (:func:`relation`: the same, or covering it);
    checked again under the cell's lock, as another process may have written it meanwhile."""
    if overwrite:
        return None
    existing = stored_record(path)
    stands = relation(existing, identity)
    if stands in ("conflict", "other"):
        raise _conflict_error([(path, existing.get("identity") or {}, identity)])
    return existing if stands in ("same", "covers") else None
