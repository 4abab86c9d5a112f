"""Leaderboards from recorded results, shaped like GAS Table 2: one table per teacher,
rows = methods, columns = NFE, the best value of each column in bold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gasbench.errors import GasbenchError
from gasbench.metrics import get_metric
from gasbench.records import iter_records

FORMATS = ("markdown", "latex", "csv")


def load_frame(results_dir: Path) -> pd.DataFrame:
    """One row per (teacher, method, NFE, metric) from every record under ``results_dir``."""
    rows = [
        {"teacher": r["teacher"]["name"], "method": r["method"], "nfe": r["nfe"], "metric": name, "value": value}
        for r in iter_records(results_dir)
        for name, value in r["metrics"].items()
    ]
    return pd.DataFrame(rows, columns=["teacher", "method", "nfe", "metric", "value"])


def leaderboard(frame: pd.DataFrame, teacher: str, metric: str) -> pd.DataFrame:
    """The numeric table of one teacher and metric: methods x NFE."""
    sub = frame[(frame.teacher == teacher) & (frame.metric == metric)]
    table = sub.pivot_table(index="method", columns="nfe", values="value", aggfunc="first")
    table.columns = [f"NFE={c}" for c in table.columns]
    table.index.name = "Method"
    return table


def _with_bold_best(table: pd.DataFrame, higher_is_better: bool, bold) -> pd.DataFrame:
    best = table.max() if higher_is_better else table.min()
    shown = table.map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")
    for col in table.columns:
        hits = table[col] == best[col]
        shown.loc[hits, col] = shown.loc[hits, col].map(bold)
    return shown


def render(results_dir: Path, metric: str = "rmse", fmt: str = "markdown", teacher: str | None = None) -> str:
    if fmt not in FORMATS:
        raise GasbenchError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    spec = get_metric(metric)
    frame = load_frame(results_dir)
    if frame.empty:
        raise GasbenchError(f"no results recorded under '{results_dir}'. Run `gasbench run` first.")
    teachers = sorted(frame.teacher.unique()) if teacher is None else [teacher]
    arrow = "higher is better" if spec.higher_is_better else "lower is better"
    parts = []
    for name in teachers:
        table = leaderboard(frame, name, metric)
        if table.empty:
            continue
        if fmt == "csv":
            parts.append(table.reset_index().assign(teacher=name).to_csv(index=False))
        elif fmt == "latex":
            shown = _with_bold_best(table, spec.higher_is_better, lambda s: f"\\textbf{{{s}}}")
            parts.append(f"% {name}: {metric} ({arrow})\n" + shown.to_latex())
        else:
            shown = _with_bold_best(table, spec.higher_is_better, lambda s: f"**{s}**")
            parts.append(f"### {name}: {metric} ({arrow})\n\n" + shown.to_markdown())
    if not parts:
        raise GasbenchError(f"no '{metric}' results recorded under '{results_dir}' for {', '.join(teachers)}.")
    return "\n\n".join(parts) + "\n"


START_MARKER = "<!-- gasbench-table:start -->"
END_MARKER = "<!-- gasbench-table:end -->"


def write_into(document: Path, text: str) -> None:
    """Replace what stands between the leaderboard markers of ``document`` with ``text``."""
    from gasbench.records import write_atomic

    content = Path(document).read_text()
    start, end = content.find(START_MARKER), content.find(END_MARKER)
    if start < 0 or end < start:
        raise GasbenchError(
            f"{document} has no '{START_MARKER}' ... '{END_MARKER}' block to fill; add the two markers."
        )
    updated = content[: start + len(START_MARKER)] + "\n" + text.rstrip() + "\n" + content[end:]
    write_atomic(Path(document), updated.encode())
