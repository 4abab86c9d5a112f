"""`gasbench report`: one self-contained HTML page of a results directory.

Per teacher: the leaderboards (:mod:`gasbench.tables`, best of each column in bold), every metric
against NFE (one line per method, the teacher's value as a horizontal line, error bars from the
std over seed sets), the sample grids of every method and NFE beside the teacher's own samples
from the same seeds, the learned solvers' evaluation noise levels against the handcrafted
schedules at the same NFE, their Eq. 13 coefficient tables (GAS Eq. 13: x_(n+1) = sum_j a[n, j]
x_j + sum_j c[n, j] D_j) as heat-maps, and what each method cost (fit and sampling wall time, the
fit's summary). Figures and sample grids are embedded as PNG data URIs and the CSS is inline, so
the file opens anywhere without a network or the results directory.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, cell_dir, iter_records, write_atomic
from gasbench.tables import (
    COSTS,
    _shown,
    arrow_text,
    default_metrics,
    direction_of,
    leaderboard,
    load_frame,
    marks_footer,
    paired_marks,
    row_sets,
    seed_values,
    unranked_note,
    with_schedules,
)

BOLD = "\x00"  # prefix _shown puts on the best cell of a column; rendered as <strong>
ANNOTATED_NFE = 6  # coefficient heat-maps print their values up to this size

CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 1.5em auto; max-width: 1180px;
       color: #222; font-size: 14px; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #446; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eef; }
tbody th { text-align: left; font-weight: normal; white-space: nowrap; }
tr.teacher { background: #f4f4f4; font-style: italic; }
td strong { color: #0a4; }
img { max-width: 100%; }
.figures { display: flex; flex-wrap: wrap; gap: 8px; }
table.samples td { text-align: center; vertical-align: top; }
table.samples img { width: 200px; }
figure.reference { display: inline-block; margin: 0.5em 0; }
figure.reference img { width: 260px; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: bold; }
.note { color: #666; font-style: italic; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{escape(alt)}">'


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _new_figure(width: float, height: float):
    # Figure without pyplot: no global backend state, no windows, Agg canvas by default
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _table_html(shown: pd.DataFrame) -> str:
    """A formatted table (strings) as HTML; cells marked with :data:`BOLD` become <strong>."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [shown.index.name or "", *shown.columns])
    body = []
    for label, row in shown.iterrows():
        cells = "".join(f"<td><strong>{escape(v[1:])}</strong></td>" if v.startswith(BOLD) else f"<td>{escape(v)}</td>"
                        for v in map(str, row))
        teacher = ' class="teacher"' if str(label).startswith("Teacher (") else ""
        body.append(f'<tr{teacher}><th scope="row">{escape(str(label))}</th>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _arrow(frame: pd.DataFrame, teacher: str, metric: str) -> str:
    return arrow_text(direction_of(metric), leaderboard(frame, teacher, metric)[0])


def _leaderboard_html(frame: pd.DataFrame, teacher: str, metric: str) -> str:
    """The table as :func:`gasbench.tables.render` bolds it, and why nothing is bold where nothing is."""
    means, stds = leaderboard(frame, teacher, metric)
    if means.empty:
        return ""
    direction, per_seed = direction_of(metric), seed_values(frame, teacher, metric, means)
    html = []
    for rows, _ in row_sets(means, frame, teacher, direction):  # grouped, ablations apart, as the tables
        part_means, part_stds = means.loc[rows], stds.loc[rows]
        lines, marks = unranked_note(direction, part_means, metric), paired_marks(part_means, per_seed, direction)
        if metric not in COSTS:
            lines.append(marks_footer(per_seed, marks, metric))
        shown = with_schedules(_shown(part_means, part_stds, direction, lambda s: BOLD + s, marks), frame, teacher)
        html.append(_table_html(shown) + "".join(f'<p class="note">{escape(line)}</p>' for line in lines))
    return "".join(html)


def _styles(methods: list[str], learned: dict[str, bool]) -> dict[str, dict[str, Any]]:
    """One colour per method for every figure of a teacher; learned solvers solid with dots,
    handcrafted ones dashed with squares."""
    from matplotlib import colormaps

    colors = [*colormaps["tab10"].colors, *colormaps["tab20b"].colors]  # 30 distinct colours
    return {m: {"color": colors[i % len(colors)], "linestyle": "-" if learned.get(m) else "--",
                "marker": "o" if learned.get(m) else "s", "markersize": 4}
            for i, m in enumerate(methods)}


def _metric_figure(frame: pd.DataFrame, teacher: str, metric: str, styles: dict[str, dict[str, Any]]):
    """``metric`` against NFE, one line per method with the std over seed sets as error bars,
    the teacher's value as a dotted horizontal line; log y as :func:`_log_y` decides."""
    sub = frame[(frame.teacher == teacher) & (frame.metric == metric)]
    fig = _new_figure(6.4, 3.7)
    ax = fig.add_subplot()
    methods = sub[sub.method != TEACHER_LABEL]
    for method, rows in methods.groupby("method", sort=True):
        rows = rows.sort_values("nfe")
        yerr = None if rows["std"].isna().all() else rows["std"].fillna(0).to_numpy()
        ax.errorbar(rows.nfe.to_numpy(), rows.value.to_numpy(dtype=float), yerr=yerr, capsize=2, linewidth=1.2,
                    label=method, **styles[method])
    for row in sub[sub.method == TEACHER_LABEL].itertuples():
        ax.axhline(row.value, color="black", linestyle=":", linewidth=1.2, label=f"teacher ({row.reference})")
    _log_y(ax, sub.value.to_numpy())
    ax.set_xticks(sorted(methods.nfe.unique()))
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(f"{teacher}: {metric} ({_arrow(frame, teacher, metric)})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    return fig


def _log_y(ax, values: np.ndarray) -> None:
    """A log y axis, labelled 0.1 rather than 10^-1, when ``values`` are positive and span a
    decade or more; within less than a decade log and linear look alike and linear has ticks."""
    from matplotlib.ticker import FuncFormatter

    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() >= 10 * values.min():
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _learned_cells(results_dir: Path, teacher: str, records: list[dict]) -> tuple[dict, list[str]]:
    """(method, nfe) -> (evaluation sigmas, table or None for a per-sample table, teacher object)
    of every learned cell with a saved solver, and one note per cell that could not be loaded. The
    teacher is loaded once, by the first cell, and shared by the others."""
    from gasbench.solvers.cells import load_cell
    from gasbench.solvers.executor import SolverTable

    cells, notes, loaded = {}, [], None
    for r in records:
        if not r["solver"].get("learned"):
            continue
        directory = cell_dir(results_dir, teacher, r["method"], r["nfe"])
        try:
            solver, loaded, nfe = load_cell(directory, loaded)
            sigmas = solver.steps(solver.params, loaded, nfe)["evaluation sigma"]
            table = solver.table(loaded, nfe)
        except GasbenchError as exc:
            notes.append(f"{r['method']} NFE {r['nfe']}: {exc}")
            continue
        cells[r["method"], nfe] = (sigmas.double().numpy(), table if isinstance(table, SolverTable) else None, loaded)
    return cells, notes


def _schedule_figure(cells: dict, styles: dict[str, dict[str, Any]]):
    """Per NFE, the noise level of each denoiser evaluation: learned solvers against the
    handcrafted schedules (whose first NFE points a one-evaluation-per-step solver evaluates at)."""
    from gasbench.core.registry import SCHEDULES
    from gasbench.solvers.schedules import make_sigmas

    nfes = sorted({nfe for _, nfe in cells})
    fig = _new_figure(min(3.2 * len(nfes), 12.5) + 2.2, 3.6)
    axes = fig.subplots(1, len(nfes), squeeze=False)[0]
    dashes = [(1, 1), (4, 2), (6, 2, 1, 2), (2, 3), (8, 3)]
    for ax, nfe in zip(axes, nfes):
        teacher = next(t for (_, n), (_, _, t) in cells.items() if n == nfe)
        for i, entry in enumerate(SCHEDULES):
            try:
                sigmas = make_sigmas(entry.name, nfe, teacher)[:-1].double().numpy()
            except GasbenchError:  # a schedule defined at some step counts only (GITS)
                continue
            default = entry.name == getattr(teacher, "default_schedule", None)
            ax.plot(range(nfe), sigmas, color="black", alpha=0.6, linestyle=(0, dashes[i % len(dashes)]),
                    linewidth=2.2 if default else 1.2,
                    label=f"{entry.name} (handcrafted{', default' if default else ''})")
        for (method, n), (sigmas, table, _) in sorted(cells.items()):
            if n == nfe:  # a solver that picks its steps per sample (DLMS) reports their mean
                ax.plot(range(nfe), sigmas, linewidth=1.2, label=method if table is not None else f"{method} (mean)",
                        **styles[method])
        _log_y(ax, np.concatenate([line.get_ydata() for line in ax.get_lines()]))
        ax.set_xticks(range(nfe))
        ax.set_title(f"NFE {nfe}", fontsize=10)
        ax.set_xlabel("evaluation n")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("sigma of evaluation n")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=7, frameon=False)
    return fig


def _coefficient_figure(method: str, tables: dict[int, Any]):
    """The a (on points x_j) and c (on denoiser outputs D_j) matrices of one learned method at
    each NFE: row n makes x_(n+1); the blank upper triangle is structurally zero."""
    from matplotlib.colors import TwoSlopeNorm

    nfes = sorted(tables)
    fig = _new_figure(2.9 * len(nfes) + 0.5, 5.4)
    axes = fig.subplots(2, len(nfes), squeeze=False)
    for col, nfe in enumerate(nfes):
        for row, name in enumerate(("a", "c")):
            matrix = getattr(tables[nfe], name).detach().double().numpy()
            shown = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), k=1), matrix)
            bound = max(float(np.abs(matrix).max()), 1e-12)
            ax = axes[row, col]
            image = ax.imshow(shown, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound))
            if nfe <= ANNOTATED_NFE:
                for n, j in zip(*np.tril_indices(nfe)):
                    ax.text(j, n, f"{matrix[n, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(matrix[n, j]) > 0.6 * bound else "black")
            ax.set_title(f"{name}[n, j], NFE {nfe}", fontsize=9)
            ax.set_xlabel("j", fontsize=8)
            ax.set_ylabel("n", fontsize=8)
            ax.set_xticks(range(nfe))
            ax.set_yticks(range(nfe))
            ax.tick_params(labelsize=7)
            fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    fig.suptitle(f"{method}: Eq. 13 coefficients", fontsize=10)
    return fig


def _samples_html(results_dir: Path, teacher: str, records: list[dict], methods: list[str]) -> str:
    """The teacher's grid, then one row per method and one column per NFE of the cells' grids."""
    nfes = sorted({r["nfe"] for r in records if r["method"] != TEACHER_LABEL})
    parts = []
    reference = Path(results_dir) / teacher / "reference_samples.png"
    label = next((f"{r['solver']['name']} NFE {r['nfe']}" for r in records if r["method"] == TEACHER_LABEL),
                 "its reference solver")
    if reference.is_file():
        parts.append(f'<figure class="reference">{_img(reference.read_bytes(), f"{teacher} reference samples")}'
                     f"<figcaption>Teacher ({escape(label)})</figcaption></figure>")
    rows = []
    for method in methods:
        cells = []
        for nfe in nfes:
            grid = cell_dir(results_dir, teacher, method, nfe) / "samples.png"
            cells.append(f"<td>{_img(grid.read_bytes(), f'{method} NFE {nfe} samples')}</td>" if grid.is_file()
                         else "<td>-</td>")
        rows.append(f'<tr><th scope="row">{escape(method)}</th>{"".join(cells)}</tr>')
    head = "".join(f"<th>NFE={n}</th>" for n in nfes)
    parts.append(f'<table class="samples"><thead><tr><th>Method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return "".join(parts)


def _training_html(records: list[dict]) -> str:
    """The fit summaries of the learned cells, one row per (method, NFE), in FitResult's order."""
    from dataclasses import fields

    from gasbench.solvers.fit import FitResult

    rows = {(r["method"], r["nfe"]): r["training"] for r in sorted(records, key=lambda r: (r["method"], r["nfe"]))
            if r.get("training")}
    if not rows:
        return '<p class="note">No learned method: nothing was fitted.</p>'
    table = pd.DataFrame([{k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in s.items()} for s in rows.values()],
                         index=[f"{m} NFE {n}" for m, n in rows]).fillna("-")
    known = [f.name for f in fields(FitResult) if f.name in table.columns]
    table = table[known + [c for c in table.columns if c not in known]].rename(columns=lambda c: c.replace("_", " "))
    table.index.name = "Cell"
    return _table_html(table)


def _seeds_text(records: list[dict]) -> str:
    seeds = {tuple(map(tuple, r["seeds"])) for r in records if r["method"] != TEACHER_LABEL and r.get("seeds")}
    if len(seeds) != 1:
        return "The cells were sampled on different seeds; each grid shows the first seeds of its cell."
    spans = ", ".join(f"{first}..{last}" for first, last in next(iter(seeds)))
    return f"Every method samples the same seeds ({spans}); the grids show the first seeds of the first set."


def _teacher_section(results_dir: Path, teacher: str, frame: pd.DataFrame, records: list[dict]) -> str:
    sub = frame[frame.teacher == teacher]
    recorded = list(dict.fromkeys(sub.metric))
    defaults = [m for m in default_metrics(teacher) if m in recorded]
    quality = defaults + sorted(m for m in recorded if m not in defaults and m not in COSTS)
    costs = [m for m in COSTS if m in recorded]
    methods = sorted(set(sub.method) - {TEACHER_LABEL})
    learned = {r["method"]: bool(r["solver"].get("learned")) for r in records}
    styles = _styles(methods, learned)
    anchor = escape(teacher)
    out = [f'<h2 id="{anchor}">Teacher: {escape(teacher)}</h2>', f'<p class="meta">{escape(_seeds_text(records))}</p>']

    out.append("<h3>Leaderboards</h3>")
    for i, metric in enumerate(quality):
        table = _leaderboard_html(frame, teacher, metric)
        summary = f"{escape(teacher)}: {escape(metric)} ({escape(_arrow(frame, teacher, metric))})"
        out.append(f"<details{' open' if i == 0 else ''}><summary>{summary}</summary>{table}</details>")

    out.append("<h3>Metrics against NFE</h3><div class=\"figures\">")
    out.extend(_img(_figure_png(_metric_figure(frame, teacher, m, styles)), f"{teacher} {m} against NFE") for m in quality)
    out.append("</div>")

    out.append("<h3>Samples</h3>")
    out.append(_samples_html(results_dir, teacher, records, methods))

    cells, notes = _learned_cells(results_dir, teacher, records)
    out.append("<h3>Learned time steps</h3>")
    if cells:
        out.append(_img(_figure_png(_schedule_figure(cells, styles)), f"{teacher} learned and handcrafted noise levels"))
    else:
        out.append('<p class="note">No learned solver state to plot.</p>')
    out.extend(f'<p class="note">{escape(note)}</p>' for note in notes)

    out.append("<h3>Learned coefficients</h3>")
    for method in sorted({m for m, _ in cells}):
        tables = {nfe: table for (m, nfe), (_, table, _) in cells.items() if m == method and table is not None}
        if tables:
            out.append(_img(_figure_png(_coefficient_figure(method, tables)), f"{method} coefficients"))
        else:
            out.append(f'<p class="note">{escape(method)}: coefficients and steps are chosen per sample while '
                       f"sampling; there is no fixed table to show.</p>")

    out.append("<h3>Cost</h3>")
    for metric in costs:
        out.append(f"<p><b>{escape(metric)}</b> (wall seconds, {_arrow(frame, teacher, metric)})</p>")
        out.append(_leaderboard_html(frame, teacher, metric))
    if "train_s" in costs:
        figure = _figure_png(_metric_figure(frame, teacher, "train_s", styles))
        out.append(f'<div class="figures">{_img(figure, f"{teacher} training time")}</div>')
    out.append("<p><b>Fits</b></p>" + _training_html(records))
    return "\n".join(out)


def build_report(results_dir: Path) -> str:
    """The HTML page of every teacher recorded under ``results_dir`` (see the module docstring)."""
    results_dir = Path(results_dir)
    frame = load_frame(results_dir)
    if frame.empty:
        raise GasbenchError(f"no results recorded under '{results_dir}'. Run `gasbench run` first.")
    records: dict[str, list[dict]] = {}
    for r in iter_records(results_dir):
        records.setdefault(r["teacher"]["name"], []).append(r)
    teachers = sorted(records)
    every = [r for rs in records.values() for r in rs]
    created = sorted(r["created"] for r in every if r.get("created"))
    meta = (f"{len(every)} cells of {len(teachers)} teacher(s)"
            + (f", recorded {created[0][:10]} to {created[-1][:10]}" if created else "") + ".")
    toc = " · ".join(f'<a href="#{escape(t)}">{escape(t)}</a>' for t in teachers)
    sections = "\n".join(_teacher_section(results_dir, t, frame, records[t]) for t in teachers)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>gasbench report: {escape(str(results_dir))}</title><style>{CSS}</style></head><body>"
            f"<h1>gasbench report: {escape(str(results_dir))}</h1><p class=\"meta\">{escape(meta)}</p>"
            f'<p class="meta">Teachers: {toc}. Bold: the best method of each column (not the teacher); '
            f'for a metric ranked by closeness to the teacher, the one nearest the teacher row.</p>'
            f"{sections}</body></html>\n")


def write_report(results_dir: Path, out: Optional[Path] = None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``<results_dir>/report.html``) atomically."""
    out = Path(out) if out is not None else Path(results_dir) / "report.html"
    write_atomic(out, build_report(results_dir).encode("utf-8"))
    return out
