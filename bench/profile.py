"""`gasbench bench profile`: where a run's time went, per method and NFE, from its records.

Every cell's record holds its seconds per phase (``time_s``, :mod:`gasbench.core.phases`); this
module folds the phase paths into the columns a speed decision needs:

* ``teacher solves``: reference trajectories for the training pairs (cache misses only);
* ``fit forward`` / ``fit backward``: the teacher network's forward passes inside the fit steps,
  and autograd's backward pass through them (the solver's own arithmetic is a small part of it);
* ``discriminator``: GAS's discriminator steps, including the fakes' forward passes;
* ``fit other``: the rest of the fit steps (solver arithmetic, optimiser, EMA);
* ``validation``: the validation losses of the fit;
* ``sampling`` and ``metrics``: the evaluation of the cell.
"""

from __future__ import annotations

from pathlib import Path

from gasbench.core.records import TEACHER_LABEL, iter_records

COLUMNS = ("teacher solves", "fit forward", "fit backward", "discriminator", "fit other", "validation",
           "sampling", "metrics")


def phase_columns(time_s: dict[str, float]) -> dict[str, float]:
    """A cell's phase paths folded into :data:`COLUMNS` (seconds); ``total`` is their sum. A
    phase's time includes the phases inside it, so each column reads one path and ``fit other``
    is the fit steps' time less the phases inside them."""
    def seconds(path: str) -> float:
        return time_s.get(path, 0.0)

    forward, backward = seconds("fit_step/network_forward"), seconds("fit_step/backward")
    discriminator = seconds("fit_step/discriminator")
    columns = {
        "teacher solves": seconds("teacher_solves"),
        "fit forward": forward,
        "fit backward": backward,
        "discriminator": discriminator,
        "fit other": seconds("fit_step") - forward - backward - discriminator,
        "validation": seconds("validation"),
        "sampling": seconds("sampling"),
        "metrics": seconds("metrics"),
    }
    return {**columns, "total": sum(columns.values())}


def profile_rows(results_dir: Path, teacher: str | None = None) -> list[dict]:
    """One row per recorded (teacher, method, NFE) cell that has phase times, in seconds, sorted by
    method and NFE; then one row per method summing its cells, and the run's total with each
    method's share."""
    cells = [r for r in iter_records(results_dir)
             if r.get("time_s") and r["method"] != TEACHER_LABEL and (teacher is None or r["teacher"]["name"] == teacher)]
    rows = [{"method": r["method"], "nfe": r["nfe"], **phase_columns(r["time_s"])}
            for r in sorted(cells, key=lambda r: (r["method"], r["nfe"]))]
    grand = sum(row["total"] for row in rows) or 1.0
    methods = []
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        summed = {c: sum(row[c] for row in mine) for c in (*COLUMNS, "total")}
        methods.append({"method": method, "nfe": "all", **summed, "share": f"{100 * summed['total'] / grand:.0f}%"})
    return rows + sorted(methods, key=lambda row: -row["total"])


def profile_markdown(rows: list[dict]) -> str:
    from tabulate import tabulate

    shown = [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    return tabulate(shown, headers="keys", tablefmt="github")
