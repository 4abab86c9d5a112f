"""Leaderboards from recorded results, shaped like GAS Table 2: one table per teacher,
rows = methods, columns = NFE, the best value of each column in bold: the lowest, the highest or,
for a metric that a sampler should match its teacher on (precision, recall, density, coverage),
the nearest the teacher row, as the metric's direction says (:data:`gasbench.metrics.DIRECTIONS`).
A last ``schedule`` column names the time-step schedule each row ran on (:func:`with_schedules`).

With the papers' numbers (``render(..., with_paper=True)``, ``gasbench table --with-paper``) each
table keeps its columns (the NFEs we measured) and gains the published rows of the same teacher and
metric, labelled ``method (Paper Table N)`` and printed as the paper prints them: the papers'
teacher rows beneath ours; each published row right beneath our row of the same method label;
after our last row of a solver, the paper's other configurations of that solver (other orders,
schedules, ablations); then the methods we did not run, grouped by solver, with '-' where the
paper has no number. Reading down one solver's block compares our number with each paper's, and
the ``-m``/``--exclude`` patterns select published rows as they select ours. Published rows are
never bold (the best is among ours) and their notes follow the table; a published number at an
NFE we did not measure is not shown (a teacher's single FID holds at every NFE). In csv the rows
carry ``source`` (``gasbench`` or the table) and ``note`` columns instead. A table without
published rows gets a one-line note in markdown and latex saying why.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, iter_records
from gasbench.metrics import get_metric
from gasbench.paper import base_method, paper_numbers

FORMATS = ("markdown", "latex", "csv")
# What a cell cost, recorded with it and tabled like a metric (lower is better): the learned
# solver's fit and the sampling of every seed set, in seconds of wall time; the fit's student
# network passes (forward + backward per sample), its iterations and the teacher solutions it read
COSTS = {
    "train_s": lambda record: (record.get("training") or {}).get("wall_time_s"),
    "sample_s": lambda record: record.get("wall_time_s"),
    "train_passes": lambda record: ((record.get("training") or {}).get("passes") or {}).get("total"),
    "train_iterations": lambda record: (record.get("training") or {}).get("iterations"),
    "teacher_solves": lambda record: (record.get("training") or {}).get("teacher_solves"),
}


def load_frame(results_dir: Path) -> pd.DataFrame:
    """One row per (teacher, method, NFE, metric) from every record under ``results_dir``, with
    the mean over seed sets and their std (NaN for a single seed set)."""
    rows = []
    for r in iter_records(results_dir):
        base = {"teacher": r["teacher"]["name"], "method": r["method"], "nfe": r["nfe"],
                "reference": f"{r['solver']['name']} NFE {r['nfe']}" if r["method"] == TEACHER_LABEL else None,
                "schedule": "learned" if r["solver"].get("learned") else r["solver"].get("schedule")}
        for name, value in r["metrics"].items():
            rows.append({**base, "metric": name, "value": value, "std": r.get("metrics_std", {}).get(name, float("nan"))})
        for name, cost in COSTS.items():
            value = cost(r)
            if value is not None:
                rows.append({**base, "metric": name, "value": value, "std": float("nan")})
    return pd.DataFrame(rows, columns=["teacher", "method", "nfe", "metric", "value", "std", "reference", "schedule"])


def leaderboard(frame: pd.DataFrame, teacher: str, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The numeric tables (means, stds) of one teacher and metric: methods x NFE. The teacher's
    own row comes first, its one value repeated under every NFE as the bar to reach."""
    sub = frame[(frame.teacher == teacher) & (frame.metric == metric)]
    methods = sub[sub.method != TEACHER_LABEL]
    tables = []
    for values in ("value", "std"):
        table = methods.pivot_table(index="method", columns="nfe", values=values, aggfunc="first", dropna=False)
        teacher_rows = sub[sub.method == TEACHER_LABEL]
        if not teacher_rows.empty and not table.empty:
            row = teacher_rows.iloc[0]
            table = pd.concat([pd.DataFrame([[row[values]] * len(table.columns)], columns=table.columns,
                                            index=[f"Teacher ({row['reference']})"]), table])
        table.columns = [f"NFE={c}" for c in table.columns]
        table.index.name = "Method"
        tables.append(table)
    return tables[0], tables[1]


def with_schedules(table: pd.DataFrame, frame: pd.DataFrame, teacher: str) -> pd.DataFrame:
    """``table`` (a leaderboard's rows) with a last ``schedule`` column: the time-step schedule a
    handcrafted row ran on, ``NFE n: name`` each where its NFEs differ (``--schedule tuned`` chooses
    per NFE), the teacher row's reference solver's, or ``learned``; unchanged when no row records one."""
    sub = frame[frame.teacher == teacher].drop_duplicates(["method", "nfe"]).sort_values("nfe")
    column = []
    for label in table.index:
        method = TEACHER_LABEL if label.startswith("Teacher (") else label
        rows = sub[sub.method == method].dropna(subset=["schedule"])
        names = list(dict.fromkeys(rows.schedule))
        per_nfe = ", ".join(f"NFE {n}: {name}" for n, name in zip(rows.nfe, rows.schedule))
        column.append(names[0] if len(names) == 1 else per_nfe or "-")
    return table.assign(schedule=column) if any(name != "-" for name in column) else table


def direction_of(metric: str) -> str:
    """Which value of a tabled column is best (:data:`gasbench.metrics.DIRECTIONS`); costs: the lowest."""
    return "lower" if metric in COSTS else get_metric(metric).direction


def teacher_value(means: pd.DataFrame) -> Optional[float]:
    """The teacher row's value (the same under every NFE), None when the table has no teacher row."""
    row = means[means.index.str.startswith("Teacher (")]
    return None if row.empty else float(row.iloc[0, 0])


def arrow_text(direction: str, means: pd.DataFrame) -> str:
    """The heading's words for ``direction``; a teacher-direction one names the teacher's value."""
    if direction != "teacher":
        return f"{direction} is better"
    target = teacher_value(means)
    return "closest to the teacher is best" if target is None else f"closest to the teacher's {target:.4g} is best"


def unranked_note(direction: str, means: pd.DataFrame, metric: str) -> list[str]:
    """Why a table has no bold cell: a teacher-direction metric without the teacher row."""
    if direction != "teacher" or teacher_value(means) is not None:
        return []
    return [f"Nothing is bold: {metric} ranks by closeness to the teacher's own value, and no teacher row "
            f"records it here (`gasbench run` writes one with any distribution metric)."]


def _shown(means: pd.DataFrame, stds: pd.DataFrame, direction: str, bold) -> pd.DataFrame:
    """Formatted cells, ``mean ± std`` where a std exists; the best method (not the teacher) bold:
    the lowest, the highest, or the nearest the teacher row (none without one), per ``direction``."""
    mine = ~means.index.str.startswith("Teacher (")
    target = teacher_value(means)
    scores = {"lower": means, "higher": -means, "teacher": None if target is None else (means - target).abs()}[direction]

    def cell(mean: float, std: float) -> str:
        if pd.isna(mean):
            return "-"
        return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"

    shown = pd.DataFrame({c: [cell(m, d) for m, d in zip(means[c], stds[c])] for c in means.columns}, index=means.index)
    if scores is None:
        return shown
    for col in means.columns:
        hits = (scores[col] == scores.loc[mine, col].min()) & mine
        shown.loc[hits, col] = shown.loc[hits, col].map(bold)
    return shown


def default_metrics(teacher: str) -> tuple[str, ...]:
    """The metrics `gasbench run` records for ``teacher`` when none are named."""
    from gasbench.core.registry import TEACHERS
    from gasbench.teachers.base import Teacher

    try:
        factory = TEACHERS.resolve(teacher).obj
    except GasbenchError:  # a plugin teacher that is not loaded now
        return Teacher.protocol.metrics
    # a factory function's teacher is only known once built: the default protocol's
    return (factory.protocol if isinstance(factory, type) else Teacher.protocol).metrics


def _default_metric(frame: pd.DataFrame, teacher: str) -> str:
    """The teacher's first default metric that was recorded, else the first recorded one."""
    recorded = list(dict.fromkeys(frame[frame.teacher == teacher].metric))
    return next((m for m in default_metrics(teacher) if m in recorded), recorded[0])


def select_methods(frame: pd.DataFrame, methods: list[str] | None, exclude: list[str] | None) -> pd.DataFrame:
    """The rows whose method label matches one of ``methods`` and none of ``exclude`` (shell-style
    patterns, e.g. ``gs*`` or ``*+*`` for every non-default configuration); the teacher row stays."""
    def matches(label: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(label, p) for p in patterns)

    keep = frame.method.map(lambda m: m == TEACHER_LABEL or (
        (not methods or matches(m, methods)) and not (exclude and matches(m, exclude))))
    return frame[keep.astype(bool)]  # an empty mask has dtype object, which pandas reads as column labels


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


def _display_order(ours: list[str], published: list[Published]) -> list[tuple[str, Optional[Published]]]:
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


def _with_published(shown: pd.DataFrame, order) -> pd.DataFrame:
    """Our formatted rows and the published ones (as printed, '-' where the paper has none)."""
    rows = [shown.loc[label] if p is None else pd.Series({c: p.printed.get(c, "-") for c in shown.columns})
            for label, p in order]
    merged = pd.DataFrame(rows, index=[label for label, _ in order], columns=shown.columns)
    merged.index.name = shown.index.name
    return merged


def _csv_with_published(merged: pd.DataFrame, order) -> pd.DataFrame:
    """The csv rows: ours with ``source`` gasbench, the papers' under their method label."""
    rows = [{**merged.loc[label].to_dict(), "source": "gasbench", "note": ""} if p is None
            else {**p.values, "source": p.source, "note": p.note} for label, p in order]
    out = pd.DataFrame(rows, index=[label if p is None else p.method for label, p in order],
                       columns=[*merged.columns, "source", "note"])
    out.index.name = merged.index.name
    return out


def _no_published(teacher: str, metric: str, reported: pd.DataFrame, selected: pd.DataFrame) -> str:
    """The one-line note for a table without published rows: the papers report nothing for it,
    nothing among the selected methods, or nothing at the NFEs measured here."""
    if reported.empty:
        return f"No published {metric} numbers for teacher '{teacher}' in the GAS, S4S or DLMS tables."
    if selected.empty:
        return f"No published {metric} numbers for teacher '{teacher}' among the selected methods."
    nfes = ", ".join(str(n) for n in sorted(set(selected.nfe.dropna())))
    return f"The papers report {metric} for teacher '{teacher}' only at NFE {nfes}, none of which is measured here."


def _latex_label(label: str) -> str:
    """A method label as LaTeX text (option names such as train_size hold underscores)."""
    return label.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")


def render(results_dir: Path, metrics: list[str] | None = None, fmt: str = "markdown", teacher: str | None = None,
           methods: list[str] | None = None, exclude: list[str] | None = None, with_paper: bool = False,
           nfes: list[int] | None = None) -> str:
    """Leaderboards of every teacher (or one) for each of ``metrics`` (default: the teacher's first),
    with the methods :func:`select_methods` keeps; ``with_paper`` adds the papers' numbers for the
    same teacher and metric (the patterns select among those too), laid out as the module
    docstring says; ``nfes``: only those NFE columns."""
    if fmt not in FORMATS:
        raise GasbenchError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    for name in metrics or []:
        if name not in COSTS:
            get_metric(name)
    frame = load_frame(results_dir)
    if frame.empty:
        raise GasbenchError(f"no results recorded under '{results_dir}'. Run `gasbench run` first.")
    frame = select_methods(frame, methods, exclude)
    if nfes:  # the teacher's own row (at its reference NFE) stands in every column
        frame = frame[frame.nfe.isin(nfes) | (frame.method == TEACHER_LABEL)]
    teachers = sorted(frame.teacher.unique()) if teacher is None else [teacher]
    parts = []
    for name in teachers:
        if name not in set(frame.teacher):
            continue
        for metric in metrics or [_default_metric(frame, name)]:
            direction = direction_of(metric)
            means, stds = leaderboard(frame, name, metric)
            if means.empty:
                continue
            arrow, unranked = arrow_text(direction, means), unranked_note(direction, means, metric)
            order, notes = None, []
            if with_paper:
                reported = paper_numbers(name, metric)
                selected = select_methods(reported, methods, exclude)
                published = published_rows(selected, list(means.columns))
                order = _display_order(list(means.index), published)
                notes = ([f"{p.label}: {p.note}" for _, p in order if p is not None and p.note] if published
                         else [_no_published(name, metric, reported, selected)])
            if fmt == "csv":
                merged = with_schedules(means.join(stds.add_suffix(" std")), frame, name)
                if order is not None:
                    merged = _csv_with_published(merged, order)
                parts.append(merged.reset_index().assign(teacher=name, metric=metric).to_csv(index=False))
            elif fmt == "latex":
                shown = with_schedules(_shown(means, stds, direction, lambda s: f"\\textbf{{{s}}}"), frame, name)
                if order is not None:
                    shown = _with_published(shown, order)
                parts.append(f"% {name}: {metric} ({arrow})\n"
                             + shown.rename(index=_latex_label).to_latex().replace("±", "$\\pm$")
                             + "".join(f"% {line}\n" for line in unranked + notes))
            else:
                shown = with_schedules(_shown(means, stds, direction, lambda s: f"**{s}**"), frame, name)
                if order is not None:
                    shown = _with_published(shown, order)
                parts.append(f"### {name}: {metric} ({arrow})\n\n" + shown.to_markdown()
                             + "".join(f"\n\n_{line}_" for line in unranked)
                             + (_markdown_notes(notes, bool(published)) if with_paper else ""))
    if not parts:
        wanted = ", ".join(metrics) if metrics else "any metric"
        raise GasbenchError(f"no results for {wanted} recorded under '{results_dir}' for {', '.join(teachers)}.")
    return "\n\n".join(parts) + "\n"


def _markdown_notes(notes: list[str], published: bool) -> str:
    """Under a table with published rows: what they are, then their notes; else the one-line note."""
    if not published:
        return f"\n\n_{notes[0]}_"
    lines = ["_Rows 'method (Paper Table N)': the papers' reported numbers as printed, not measured here; "
             "bold is the best of ours._", *(f"- {line}" for line in notes)]
    return "\n\n" + "\n".join(lines)


MARKER = "<!-- gasbench-table{name}:{end} -->"


def write_into(document: Path, text: str, block: str | None = None) -> None:
    """Replace what stands between the leaderboard markers of ``document`` with ``text``:
    ``<!-- gasbench-table:start -->`` ... ``<!-- gasbench-table:end -->``, or for a named
    ``block`` ``<!-- gasbench-table:NAME:start -->`` ... ``<!-- gasbench-table:NAME:end -->``."""
    from gasbench.core.records import write_atomic

    name = f":{block}" if block else ""
    start_marker, end_marker = MARKER.format(name=name, end="start"), MARKER.format(name=name, end="end")
    content = Path(document).read_text()
    start, end = content.find(start_marker), content.find(end_marker)
    if start < 0 or end < start:
        raise GasbenchError(
            f"{document} has no '{start_marker}' ... '{end_marker}' block to fill; add the two markers."
        )
    updated = content[: start + len(start_marker)] + "\n" + text.rstrip() + "\n" + content[end:]
    write_atomic(Path(document), updated.encode())
