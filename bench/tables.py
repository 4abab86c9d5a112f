"""Leaderboards from recorded results, shaped like GAS Table 2: one table per teacher,
rows = methods, columns = NFE, the best value of each column in bold."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pandas as pd

from gasbench.errors import GasbenchError
from gasbench.metrics import get_metric
from gasbench.records import TEACHER_LABEL, iter_records

FORMATS = ("markdown", "latex", "csv")
# What a cell cost, recorded with it and tabled like a metric (lower is better): the learned
# solver's fit and the sampling of every seed set, in seconds of wall time
COSTS = {
    "train_s": lambda record: (record.get("training") or {}).get("wall_time_s"),
    "sample_s": lambda record: record.get("wall_time_s"),
}


def load_frame(results_dir: Path) -> pd.DataFrame:
    """One row per (teacher, method, NFE, metric) from every record under ``results_dir``, with
    the mean over seed sets and their std (NaN for a single seed set)."""
    rows = []
    for r in iter_records(results_dir):
        base = {"teacher": r["teacher"]["name"], "method": r["method"], "nfe": r["nfe"],
                "reference": f"{r['solver']['name']} NFE {r['nfe']}" if r["method"] == TEACHER_LABEL else None}
        for name, value in r["metrics"].items():
            rows.append({**base, "metric": name, "value": value, "std": r.get("metrics_std", {}).get(name, float("nan"))})
        for name, cost in COSTS.items():
            value = cost(r)
            if value is not None:
                rows.append({**base, "metric": name, "value": value, "std": float("nan")})
    return pd.DataFrame(rows, columns=["teacher", "method", "nfe", "metric", "value", "std", "reference"])


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


def _shown(means: pd.DataFrame, stds: pd.DataFrame, higher_is_better: bool, bold) -> pd.DataFrame:
    """Formatted cells, ``mean ± std`` where a std exists; the best method (not the teacher) bold."""
    methods = means[~means.index.str.startswith("Teacher (")]
    best = methods.max() if higher_is_better else methods.min()

    def cell(mean: float, std: float) -> str:
        if pd.isna(mean):
            return "-"
        return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"

    shown = pd.DataFrame({c: [cell(m, d) for m, d in zip(means[c], stds[c])] for c in means.columns}, index=means.index)
    for col in means.columns:
        hits = (means[col] == best[col]) & ~means.index.str.startswith("Teacher (")
        shown.loc[hits, col] = shown.loc[hits, col].map(bold)
    return shown


def default_metrics(teacher: str) -> tuple[str, ...]:
    """The metrics `gasbench run` records for ``teacher`` when none are named."""
    from gasbench.registry import TEACHERS
    from gasbench.teachers.base import Teacher

    try:
        factory = TEACHERS.resolve(teacher).obj
    except GasbenchError:  # a plugin teacher that is not loaded now
        return Teacher.default_metrics
    return getattr(factory, "default_metrics", Teacher.default_metrics)


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
    return frame[keep]


def render(results_dir: Path, metrics: list[str] | None = None, fmt: str = "markdown", teacher: str | None = None,
           methods: list[str] | None = None, exclude: list[str] | None = None) -> str:
    """Leaderboards of every teacher (or one) for each of ``metrics`` (default: the teacher's first),
    with the methods :func:`select_methods` keeps."""
    if fmt not in FORMATS:
        raise GasbenchError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    for name in metrics or []:
        if name not in COSTS:
            get_metric(name)
    frame = load_frame(results_dir)
    if frame.empty:
        raise GasbenchError(f"no results recorded under '{results_dir}'. Run `gasbench run` first.")
    frame = select_methods(frame, methods, exclude)
    teachers = sorted(frame.teacher.unique()) if teacher is None else [teacher]
    parts = []
    for name in teachers:
        if name not in set(frame.teacher):
            continue
        for metric in metrics or [_default_metric(frame, name)]:
            higher_is_better = metric not in COSTS and get_metric(metric).higher_is_better
            arrow = "higher is better" if higher_is_better else "lower is better"
            means, stds = leaderboard(frame, name, metric)
            if means.empty:
                continue
            if fmt == "csv":
                merged = means.join(stds.add_suffix(" std"))
                parts.append(merged.reset_index().assign(teacher=name, metric=metric).to_csv(index=False))
            elif fmt == "latex":
                shown = _shown(means, stds, higher_is_better, lambda s: f"\\textbf{{{s}}}")
                parts.append(f"% {name}: {metric} ({arrow})\n" + shown.to_latex().replace("±", "$\\pm$"))
            else:
                shown = _shown(means, stds, higher_is_better, lambda s: f"**{s}**")
                parts.append(f"### {name}: {metric} ({arrow})\n\n" + shown.to_markdown())
    if not parts:
        wanted = ", ".join(metrics) if metrics else "any metric"
        raise GasbenchError(f"no results for {wanted} recorded under '{results_dir}' for {', '.join(teachers)}.")
    return "\n\n".join(parts) + "\n"


MARKER = "<!-- gasbench-table{name}:{end} -->"


def write_into(document: Path, text: str, block: str | None = None) -> None:
    """Replace what stands between the leaderboard markers of ``document`` with ``text``:
    ``<!-- gasbench-table:start -->`` ... ``<!-- gasbench-table:end -->``, or for a named
    ``block`` ``<!-- gasbench-table:NAME:start -->`` ... ``<!-- gasbench-table:NAME:end -->``."""
    from gasbench.records import write_atomic

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
