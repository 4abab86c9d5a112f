"""The papers' published numbers as leaderboard rows (``gasbench table --with-paper``), laid out
as :mod:`gasbench.tables` describes: each published row beneath our row of the same method, the
paper's other configurations after our last row of that solver, then the methods we did not run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from gasbench.core.records import TEACHER_LABEL
from gasbench.paper import base_method


@dataclass
class Published:
    """One method of one paper's table as a leaderboard row: its values in our NFE columns."""

    method: str
    source: str  # the table, e.g. "GAS Table 2a"
    printed: dict[str, str]  # column -> the value as the paper prints it
    values: dict[str, float]
    note: str

    @property
    def label(self) -> str:
        return f"{self.method} ({self.source})"


def published_rows(numbers: pd.DataFrame, columns: list[str]) -> list[Published]:
    """The papers' numbers (:func:`gasbench.paper.paper_numbers`) as rows over ``columns``
    (``NFE=n``); a value without an NFE (a teacher's own) fills every column the row has no
    per-NFE value for. Rows with nothing in ``columns`` are left out."""
    rows = []
    for (source, method), group in numbers.groupby(["table", "method"], sort=False):
        printed, values = {}, {}
        for r in group.sort_values("nfe", na_position="last").itertuples():
            for col in columns if pd.isna(r.nfe) else [f"NFE={r.nfe}"]:
                if col in columns and col not in printed:
                    printed[col], values[col] = r.printed, r.value
        if printed:
            note = "; ".join(dict.fromkeys(n for n in group.note if n))
            rows.append(Published(method, source, printed, values, note))
    return rows


def display_order(ours: list[str], published: list[Published]) -> list[tuple[str, Optional[Published]]]:
    """(label, None) for our rows and (label, row) for published ones, in the order the module
    docstring describes; the stable sorts keep the papers' table order within a method."""
    def method_of(label: str) -> str:
        return TEACHER_LABEL if label.startswith("Teacher (") else label

    last_of_solver = {base_method(method_of(label)): i for i, label in enumerate(ours)}
    left = list(published)
    order: list[tuple[str, Optional[Published]]] = []

    def take(rows: list[Published]) -> None:
        order.extend((p.label, p) for p in rows)
        for p in rows:
            left.remove(p)

    if TEACHER_LABEL not in map(method_of, ours):  # the papers' teacher rows head the table as ours would
        take([p for p in left if p.method == TEACHER_LABEL])
    for i, label in enumerate(ours):
        order.append((label, None))
        method = method_of(label)
        take([p for p in left if p.method == method])
        if last_of_solver[base_method(method)] == i:
            take(sorted((p for p in left if base_method(p.method) == base_method(method)), key=lambda p: p.method))
    take(sorted(left, key=lambda p: (base_method(p.method), p.method)))
    return order


def with_published(shown: pd.DataFrame, order) -> pd.DataFrame:
    """Our formatted rows and the published ones (as printed, '-' where the paper has none)."""
    rows = [shown.loc[label] if p is None else pd.Series({c: p.printed.get(c, "-") for c in shown.columns})
            for label, p in order]
    merged = pd.DataFrame(rows, index=[label for label, _ in order], columns=shown.columns)
    merged.index.name = shown.index.name
    return merged


def csv_with_published(merged: pd.DataFrame, order) -> pd.DataFrame:
    """The csv rows: ours with ``source`` gasbench, the papers' under their method label."""
    rows = [{**merged.loc[label].to_dict(), "source": "gasbench", "note": ""} if p is None
            else {**p.values, "source": p.source, "note": p.note} for label, p in order]
    out = pd.DataFrame(rows, index=[label if p is None else p.method for label, p in order],
                       columns=[*merged.columns, "source", "note"])
    out.index.name = merged.index.name
    return out


def no_published(teacher: str, metric: str, reported: pd.DataFrame, selected: pd.DataFrame) -> str:
    """The one-line note for a table without published rows: the papers report nothing for it,
    nothing among the selected methods, or nothing at the NFEs measured here."""
    if reported.empty:
        return f"No published {metric} numbers for teacher '{teacher}' in the GAS, S4S or DLMS tables."
    if selected.empty:
        return f"No published {metric} numbers for teacher '{teacher}' among the selected methods."
    nfes = ", ".join(str(n) for n in sorted(set(selected.nfe.dropna())))
    return f"The papers report {metric} for teacher '{teacher}' only at NFE {nfes}, none of which is measured here."


def markdown_notes(notes: list[str], published: bool) -> str:
    """Under a table with published rows: what they are, then their notes; else the one-line note."""
    if not published:
        return f"\n\n_{notes[0]}_"
    lines = ["_Rows 'method (Paper Table N)': the papers' reported numbers as printed, not measured here; "
             "bold is the best of ours._", *(f"- {line}" for line in notes)]
    return "\n\n" + "\n".join(lines)
