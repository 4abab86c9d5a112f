"""Leaderboards from recorded results, shaped like GAS Table 2: one table per teacher,
rows = methods, columns = NFE, the best value of each column in bold: the lowest, the highest or,
for a metric that a sampler should match its teacher on (precision, recall, density, coverage),
the nearest the teacher row, as the metric's direction says (:data:`gasbench.metrics.DIRECTIONS`).
With several seed sets every method not significantly worse than the best is bold too, and values
indistinguishable from the teacher's are marked, by paired tests over the seed sets
(:mod:`gasbench.paired`); the footer says how, and ``--vs`` tables the paired differences.
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
from pathlib import Path
from typing import Optional

import pandas as pd

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, iter_records
from gasbench.metrics import get_metric
from gasbench.paired import LIKE_TEACHER, footer, like_teacher, paired_difference, tied_with_best
from gasbench.paper import paper_numbers
from gasbench.published import (
    csv_with_published,
    display_order,
    markdown_notes,
    no_published,
    published_rows,
    with_published,
)

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
    the mean over seed sets, their std (NaN for a single seed set), the per-seed-set values
    (None for one) and the seed sets they came from (what pairs two rows)."""
    rows = []
    for r in iter_records(results_dir):
        base = {"teacher": r["teacher"]["name"], "method": r["method"], "nfe": r["nfe"],
                "reference": f"{r['solver']['name']} NFE {r['nfe']}" if r["method"] == TEACHER_LABEL else None,
                "schedule": "learned" if r["solver"].get("learned") else r["solver"].get("schedule"),
                "seeds": str(r.get("seeds"))}
        for name, value in r["metrics"].items():
            rows.append({**base, "metric": name, "value": value, "std": r.get("metrics_std", {}).get(name, float("nan")),
                         "per_seed": r.get("metrics_per_seed_set", {}).get(name)})
        for name, cost in COSTS.items():
            value = cost(r)
            if value is not None:
                rows.append({**base, "metric": name, "value": value, "std": float("nan")})
    return pd.DataFrame(rows, columns=["teacher", "method", "nfe", "metric", "value", "std", "reference", "schedule",
                                       "seeds", "per_seed"])


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


def seed_values(frame: pd.DataFrame, teacher: str, metric: str, means: pd.DataFrame) -> dict[tuple[str, str], list]:
    """(row label, column) -> per-seed-set values, for the cells of ``means`` whose records hold
    them; empty unless every such record sampled the same seed sets (else nothing pairs)."""
    sub = frame[(frame.teacher == teacher) & (frame.metric == metric) & frame.per_seed.notna()]
    if sub.empty or sub.seeds.nunique() != 1:
        return {}
    values = {}
    for r in sub.itertuples():
        if r.method == TEACHER_LABEL:
            label = next((i for i in means.index if i.startswith("Teacher (")), None)
            values.update({(label, c): list(r.per_seed) for c in means.columns} if label else {})
        elif f"NFE={r.nfe}" in means.columns:
            values[(r.method, f"NFE={r.nfe}")] = list(r.per_seed)
    return values


def row_sets(means: pd.DataFrame, frame: pd.DataFrame, teacher: str, direction: str,
             sort: bool = False) -> list[tuple[list[str], str]]:
    """The row labels of each table and its heading, as the papers group them (GAS Table 2): the
    teacher, the handcrafted solvers, the learned ones; then, in a table of their own, the
    ablations and other configurations (labels with ``+option=value``) beneath the teacher and
    the methods they vary (a configuration without its method's row stays in the first table).
    ``sort``: by the mean over the columns within each group, best first."""
    learned = set(frame[(frame.teacher == teacher) & (frame.schedule == "learned")].method)
    teacher_rows = [i for i in means.index if i.startswith("Teacher (")]
    bases = {i for i in means.index if "+" not in i}
    # a configuration is an ablation when the method it varies has a row; else it is the method's row
    variants = sorted(i for i in means.index if "+" in i and i.split("+")[0] in bases)
    plain = [i for i in means.index if i not in teacher_rows and i not in variants]
    target = teacher_value(means)

    def ordered(rows: list[str]) -> list[str]:
        if not sort:
            return rows
        value = means.loc[rows].mean(axis=1)
        key = {"lower": value, "higher": -value, "teacher": (value - target).abs() if target is not None else value}[direction]
        return list(key.sort_values(kind="stable").index)

    handcrafted = ordered([i for i in plain if i not in learned])
    sets = [(teacher_rows + handcrafted + ordered([i for i in plain if i in learned]), "")]
    if variants:
        bases = [i for i in plain if any(v.split("+")[0] == i for v in variants)]
        sets.append((teacher_rows + bases + variants, ", ablations and other configurations"))
    return [(rows, heading) for rows, heading in sets if len(rows) > len(teacher_rows)]


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


def paired_marks(means: pd.DataFrame, per_seed: dict, direction: str) -> tuple[dict, set, list[float]]:
    """From the paired tests (:mod:`gasbench.paired`), per column the methods tied with the best;
    the cells like the teacher's; and each cell's detectable difference to the column's best."""
    teacher = next((i for i in means.index if i.startswith("Teacher (")), None)
    tied, like, detectable = {}, set(), []
    for col in means.columns:
        rows = {m: per_seed[(m, col)] for m in means.index if m != teacher and (m, col) in per_seed}
        lengths = {len(v) for v in rows.values()}
        if len(rows) != means[col][[i for i in means.index if i != teacher]].notna().sum() or len(lengths) != 1 \
                or min(lengths) < 2:
            continue  # a row without per-seed values: the best mean alone is bold in this column
        reference = per_seed.get((teacher, col))
        tied[col], spread = tied_with_best(rows, reference, direction)
        detectable += spread
        if reference is not None and len(reference) == min(lengths):
            like |= {(m, col) for m, v in rows.items() if like_teacher(v, reference)}
    return tied, like, detectable


def _shown(means: pd.DataFrame, stds: pd.DataFrame, direction: str, bold, marks: Optional[tuple] = None) -> pd.DataFrame:
    """Formatted cells, ``mean ± std`` where a std exists; bold: the best method (not the teacher):
    the lowest, the highest, or the nearest the teacher row (none without one), per ``direction``,
    and where the paired tests ran (``marks``, :func:`paired_marks`) every method tied with it;
    values indistinguishable from the teacher's end with :data:`~gasbench.paired.LIKE_TEACHER`."""
    mine = ~means.index.str.startswith("Teacher (")
    target = teacher_value(means)
    scores = {"lower": means, "higher": -means, "teacher": None if target is None else (means - target).abs()}[direction]

    def cell(mean: float, std: float) -> str:
        if pd.isna(mean):
            return "-"
        return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"

    shown = pd.DataFrame({c: [cell(m, d) for m, d in zip(means[c], stds[c])] for c in means.columns}, index=means.index)
    tied, like, _ = marks or ({}, set(), [])
    for label, col in like:
        shown.loc[label, col] += f" {LIKE_TEACHER}"
    if scores is None:
        return shown
    for col in means.columns:
        hits = means.index.isin(sorted(tied[col])) if col in tied else (scores[col] == scores.loc[mine, col].min()) & mine
        shown.loc[hits, col] = shown.loc[hits, col].map(bold)
    return shown


def marks_footer(per_seed: dict, marks: tuple, metric: str) -> str:
    """The footer line of a leaderboard: how its bold and teacher marks (:func:`paired_marks`)
    were decided."""
    return footer(max((len(v) for v in per_seed.values()), default=1), marks[2], metric)


def versus(means: pd.DataFrame, per_seed: dict, baseline: str) -> pd.DataFrame:
    """Cells as the paired difference to ``baseline`` (a method label, or ``teacher``) on the same
    seed sets, ``mean ± std`` of the per-seed-set differences; '-' where either lacks them."""
    label = next((i for i in means.index if i.startswith("Teacher (")), None) if baseline == TEACHER_LABEL else baseline
    if label is None or label not in means.index:
        raise GasbenchError(f"--vs {baseline}: no such row in this table; choose 'teacher' or one of its methods.")

    def cell(row: str, col: str) -> str:
        a, b = per_seed.get((row, col)), per_seed.get((label, col))
        if a is None or b is None or len(a) != len(b) or len(a) < 2:
            return "-"
        mean, std = paired_difference(a, b)
        return f"{mean:+.4g} ± {std:.2g}"

    rows = [i for i in means.index if i != label]
    out = pd.DataFrame({c: [cell(r, c) for r in rows] for c in means.columns}, index=rows)
    out.index.name = f"Method - {label}"
    return out


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


def _latex_label(label: str) -> str:
    """A method label as LaTeX text (option names such as train_size hold underscores)."""
    return label.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")


def render(results_dir: Path, metrics: list[str] | None = None, fmt: str = "markdown", teacher: str | None = None,
           methods: list[str] | None = None, exclude: list[str] | None = None, with_paper: bool = False,
           nfes: list[int] | None = None, vs: str | None = None, sort: bool = False) -> str:
    """Leaderboards of every teacher (or one) for each of ``metrics`` (default: the teacher's first),
    with the methods :func:`select_methods` keeps; ``with_paper`` adds the papers' numbers for the
    same teacher and metric (the patterns select among those too), laid out as the module
    docstring says; ``nfes``: only those NFE columns; ``vs``: the paired differences to that row
    (``teacher`` or a method label) instead of the values (:func:`versus`); rows grouped as
    :func:`row_sets` says, ``sort``: by value within each group."""
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
            per_seed = seed_values(frame, name, metric, means)
            if vs is not None:
                parts.append(_versus_part(versus(means, per_seed, vs), name, metric, vs, fmt))
                continue
            paper = (methods, exclude) if with_paper else None
            for index, (rows, heading) in enumerate(row_sets(means, frame, name, direction, sort)):
                parts.append(_part(means.loc[rows], stds.loc[rows], per_seed, frame, name, metric, fmt, heading,
                                   paper if index == 0 else None))
    if not parts:
        wanted = ", ".join(metrics) if metrics else "any metric"
        raise GasbenchError(f"no results for {wanted} recorded under '{results_dir}' for {', '.join(teachers)}.")
    return "\n\n".join(parts) + "\n"


def _part(means: pd.DataFrame, stds: pd.DataFrame, per_seed: dict, frame: pd.DataFrame, name: str, metric: str,
          fmt: str, heading: str, paper: Optional[tuple]) -> str:
    """One table in ``fmt``: its marks and footer; with ``paper`` (the method patterns) the
    papers' rows for the same teacher and metric."""
    direction = direction_of(metric)
    arrow, unranked = arrow_text(direction, means), unranked_note(direction, means, metric)
    marks = paired_marks(means, per_seed, direction)
    if metric not in COSTS:  # a cost has no seed sets
        unranked = unranked + [marks_footer(per_seed, marks, metric)]
    order, notes, published = None, [], []
    if paper is not None:
        reported = paper_numbers(name, metric)
        selected = select_methods(reported, *paper)
        published = published_rows(selected, list(means.columns))
        order = display_order(list(means.index), published)
        notes = ([f"{p.label}: {p.note}" for _, p in order if p is not None and p.note] if published
                 else [no_published(name, metric, reported, selected)])
    title = f"{name}: {metric}{heading} ({arrow})"
    if fmt == "csv":
        merged = with_schedules(means.join(stds.add_suffix(" std")), frame, name)
        if order is not None:
            merged = csv_with_published(merged, order)
        return merged.reset_index().assign(teacher=name, metric=metric).to_csv(index=False)
    if fmt == "latex":
        shown = with_schedules(_shown(means, stds, direction, lambda s: f"\\textbf{{{s}}}", marks), frame, name)
        if order is not None:
            shown = with_published(shown, order)
        return (f"% {title}\n" + shown.rename(index=_latex_label).to_latex().replace("±", "$\\pm$")
                + "".join(f"% {line}\n" for line in unranked + notes))
    shown = with_schedules(_shown(means, stds, direction, lambda s: f"**{s}**", marks), frame, name)
    if order is not None:
        shown = with_published(shown, order)
    return (f"### {title}\n\n" + shown.to_markdown() + "".join(f"\n\n_{line}_" for line in unranked)
            + (markdown_notes(notes, bool(published)) if paper is not None else ""))


def _versus_part(table: pd.DataFrame, teacher: str, metric: str, baseline: str, fmt: str) -> str:
    title = f"{teacher}: {metric}, paired difference to {baseline} (mean ± std over seed sets)"
    if fmt == "csv":
        return table.reset_index().assign(teacher=teacher, metric=metric).to_csv(index=False)
    if fmt == "latex":
        return f"% {title}\n" + table.rename(index=_latex_label).to_latex().replace("±", "$\\pm$")
    return f"### {title}\n\n" + table.to_markdown()


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
