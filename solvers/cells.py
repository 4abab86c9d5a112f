"""One loader of a result cell's solver (``gasbench show``, ``export``, ``verify`` and ``report``):
a learned solver's saved state (``solver.json`` + ``solver.safetensors``) or the solver a benchmark
record (``metrics.json``) names, with its teacher and NFE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.solvers.base import Solver
from gasbench.solvers.learned import CONFIG_FILE

RECORD_FILE = "metrics.json"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GasbenchError(f"cannot read {path} ({exc}): not a solver state or record written by gasbench, or "
                            f"damaged; rerun the cell.") from None


def _teacher_spec(name: str, record: Optional[dict]) -> str:
    """What to load the cell's teacher from: its registered name, or the diffusers folder / hub id
    its record names (a diffusers teacher's name says only the folder's last component)."""
    if name in TEACHERS:
        return name
    from gasbench.teachers.diffusers_teacher import teacher_name
    from gasbench.teachers.load import DIFFUSERS_PREFIX

    described = (record or {}).get("teacher", {})
    spec, guidance = described.get("spec"), described.get("guidance_scale")
    if spec and teacher_name(spec) == name:
        return DIFFUSERS_PREFIX + spec
    if spec and guidance is not None and teacher_name(spec, guidance) == name:
        return f"{DIFFUSERS_PREFIX}{spec}?guidance={guidance}"
    raise GasbenchError(
        f"the cell's teacher '{name}' is not a registered teacher and its record does not say where the model is; "
        f"pass it with --teacher diffusers:<folder or hub id>."
    )


def load_cell(cell: Path, teacher: Union[str, Any, None] = None) -> tuple[Solver, Any, int]:
    """(solver, teacher, NFE) of a result cell; a learned solver holds its saved state. ``teacher``:
    where to load the teacher from (a spec such as ``diffusers:<folder>``) or a teacher already
    loaded (a report loads each once); it must be the one the cell was solved with."""
    from gasbench.teachers.load import load_teacher

    cell = Path(cell)
    if not cell.is_dir():
        raise GasbenchError(f"{cell} does not exist; pass a result cell directory such as results/digits/gs/nfe4.")
    state, record = _read_json(cell / CONFIG_FILE), _read_json(cell / RECORD_FILE)
    if state is None and record is None:
        raise GasbenchError(
            f"{cell} is not a gasbench result cell: it holds no saved learned solver ({CONFIG_FILE}) and no benchmark "
            f"record ({RECORD_FILE}); pass a cell directory such as results/<teacher>/gs/nfe4."
        )
    try:
        if state is not None:
            name, recorded, nfe, options = state["solver"], state["teacher"], int(state["nfe"]), state
        else:
            name, options = record["solver"]["name"], record["solver"]
            recorded, nfe = record["teacher"]["name"], int(record["nfe"])
    except (KeyError, TypeError, ValueError):
        raise GasbenchError(f"{cell} holds a {CONFIG_FILE} or {RECORD_FILE} that is not a solver state or record "
                            f"written by gasbench; rerun the cell.") from None
    if teacher is None or isinstance(teacher, str):
        spec = teacher or _teacher_spec(recorded, record)
        loaded = load_teacher(spec)
    else:
        spec, loaded = teacher.name, teacher
    if loaded.name != recorded:
        raise GasbenchError(f"{cell} was solved with teacher '{recorded}', but '{spec}' is '{loaded.name}'.")
    cls = SOLVERS.get(name)
    solver = cls(**{k: options[k] for k in cls.options if k in options})
    if solver.learned and (state is None or not solver.load_state(cell, loaded, nfe)):
        raise GasbenchError(
            f"{cell} holds no usable state of the learned solver {name} for teacher '{recorded}' at NFE {nfe} "
            f"(missing, other teacher weights, solver code changed since, or a damaged {CONFIG_FILE}); rerun the "
            f"cell with --overwrite."
        )
    return solver, loaded, nfe
