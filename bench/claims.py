"""The papers' pairwise claims checked against our recorded results (``gasbench claims``).

Each row of ``claims.csv`` is one claim a paper's table makes about two methods, e.g. GAS Table 2a:
"GS beats LD3 at every NFE". Adding a claim is adding a line. Columns:

* ``a``, ``relation``, ``b``: method labels as gasbench records them (the registered solver and
  its changed options, ``gs+guidance=false``); ``<``: A is better than B, ``<=``: A is not worse;
* ``metric``: the metric our records are compared on; its direction says which value is better;
* ``source``: the paper's table as ``paper_results.csv`` names it ("GAS Table 3"), or its
  equation or section where no table shows the claim;
* ``paper_teacher``, ``paper_metric``, ``paper_a``, ``paper_b``: where the paper's numbers are
  looked up in ``paper_results.csv`` (:func:`gasbench.paper.paper_numbers`); the labels default to
  ``a`` and ``b``; no teacher: no numbers are quoted;
* ``note``: what differs between the paper's setting and ours (a footnote of the table).

A claim is tested on every teacher with records, at every NFE where A or B has a record, by the
paired tests of :mod:`gasbench.paired` over the seed sets both records sampled (per-seed-set values
pair by index only when the two records' ``seeds`` are equal):

* ``holds``: A significantly better than B (one-sided paired t-test at ``ALPHA``); for a ``<=``
  claim, A not significantly worse than B;
* ``reversed``: B significantly better than A;
* ``not separable``: neither (a ``<`` claim the seed sets cannot decide);
* ``not recorded``: a cell missing, fewer than two seed sets, or the two cells' seed sets differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, iter_records
from gasbench.core.registry import METRICS, SOLVERS
from gasbench.gas_curve import curve_cells
from gasbench.paired import ALPHA, paired_difference, scores, worse_p_value
from gasbench.paper import LABEL, PAPERS, base_method, load_paper_results, paper_numbers, read_table
from gasbench.tables import direction_of

CLAIMS = Path(__file__).with_name("claims.csv")
COLUMNS = ["a", "relation", "b", "metric", "source", "paper_teacher", "paper_metric", "paper_a", "paper_b", "note"]
RELATIONS = ("<", "<=")
FORMATS = ("markdown", "csv")
HOLDS, REVERSED, NOT_SEPARABLE, NOT_RECORDED = "holds", "reversed", "not separable", "not recorded"


@dataclass(frozen=True)
class Claim:
    """One row of ``claims.csv`` (the module docstring says what each field means)."""

    a: str
    relation: str
    b: str
    metric: str
    source: str
    paper_teacher: str
    paper_metric: str
    paper_a: str
    paper_b: str
    note: str

    @property
    def paper(self) -> str:
        """The key of the source's paper in :data:`gasbench.paper.PAPERS`: "GAS Table 3" -> ``gas``."""
        return next(key for key, name in PAPERS.items() if self.source.startswith(name + " "))

    @property
    def text(self) -> str:
        return f"{self.a} {self.relation} {self.b} ({self.metric})"


def _problem(row: dict[str, str]) -> Optional[str]:
    """What is wrong with one row of the claims file, or None."""
    for column in ("a", "b", "paper_a", "paper_b"):
        if row[column] and not LABEL.fullmatch(row[column]):
            return f"{column} '{row[column]}' is not a method label like 'name+key=value'"
    for column in ("a", "b"):
        if base_method(row[column]) not in SOLVERS:
            return f"{column} '{row[column]}' is not a registered solver (`gasbench list solvers`)"
    if row["relation"] not in RELATIONS:
        return f"relation '{row['relation']}' is not one of {', '.join(RELATIONS)}"
    if row["metric"] not in METRICS:
        return f"metric '{row['metric']}' is not registered (`gasbench list metrics`)"
    if not any(row["source"].startswith(name + " ") for name in PAPERS.values()):
        return f"source '{row['source']}' does not name a paper ({', '.join(PAPERS.values())})"
    if bool(row["paper_teacher"]) != bool(row["paper_metric"]):
        return "paper_teacher and paper_metric go together (both empty: no numbers quoted)"
    if row["paper_teacher"] and row["source"] not in set(load_paper_results().table):
        return f"source '{row['source']}' is not a table of paper_results.csv, so no numbers can be quoted from it"
    return None


def load_claims(path: Path = CLAIMS) -> tuple[Claim, ...]:
    """Every claim of ``path``, validated, or a GasbenchError naming the bad line."""
    raw = read_table(path, COLUMNS, "the claims")
    claims = []
    for line, row in enumerate(raw.to_dict("records"), start=2):
        problem = _problem(row)
        if problem:
            raise GasbenchError(f"{path}, line {line}: {problem}.")
        claims.append(Claim(**{**row, "paper_a": row["paper_a"] or row["a"], "paper_b": row["paper_b"] or row["b"]}))
    return tuple(claims)


# --- our evidence ----------------------------------------------------------------------------------

Cells = dict[tuple[str, str, int], dict[str, Any]]


def recorded_cells(results_dir: Path) -> Cells:
    """(teacher, method label, NFE) -> record, for every record under ``results_dir``, and every
    milestone of the GS/GAS curves there (:func:`gasbench.gas_curve.curve_cells`)."""
    cells = {(r["teacher"]["name"], r["method"], r["nfe"]): r for r in iter_records(results_dir)}
    return {**cells, **curve_cells(results_dir)}


def per_seed(record: Optional[dict], metric: str) -> Optional[list[float]]:
    """A record's values of ``metric`` per seed set, or None with fewer than two (nothing to test)."""
    values = (record or {}).get("metrics_per_seed_set", {}).get(metric)
    return values if values is not None and len(values) >= 2 else None


def teacher_values(cells: Cells, teacher: str, seeds: list, metric: str) -> Optional[list[float]]:
    """The teacher row's values on the same seed sets: what a teacher-direction metric is close to."""
    rows = [r for (name, method, _), r in cells.items() if name == teacher and method == TEACHER_LABEL]
    return next((per_seed(r, metric) for r in rows if r.get("seeds") == seeds), None)


def verdict(a, b, relation: str) -> str:
    """The claim ``A relation B`` on scores oriented so that lower is better, paired by seed set."""
    if worse_p_value(a, b) < ALPHA:
        return REVERSED
    if relation == "<=" or worse_p_value(b, a) < ALPHA:
        return HOLDS
    return NOT_SEPARABLE


def compare(cells: Cells, teacher: str, claim: Claim, nfe: int) -> tuple[str, str]:
    """(the per-seed-set differences A - B as 'mean ± std', the verdict) at one NFE of ``teacher``."""
    ra, rb = cells.get((teacher, claim.a, nfe)), cells.get((teacher, claim.b, nfe))
    va, vb = per_seed(ra, claim.metric), per_seed(rb, claim.metric)
    if va is None or vb is None:
        return "-", NOT_RECORDED
    if ra.get("seeds") is None or ra.get("seeds") != rb.get("seeds"):
        return "seeds differ", NOT_RECORDED
    mean, std = paired_difference(va, vb)
    direction = direction_of(claim.metric)
    reference = teacher_values(cells, teacher, ra.get("seeds"), claim.metric) if direction == "teacher" else None
    sa, sb = scores(va, reference, direction), scores(vb, reference, direction)
    if sa is None:  # a teacher-direction metric without the teacher's values on these seeds
        return f"{mean:+.3g} ± {std:.2g}", NOT_RECORDED
    return f"{mean:+.3g} ± {std:.2g}", verdict(sa, sb, claim.relation)


def summary(verdicts: dict[int, str]) -> str:
    """One verdict when every NFE agrees, else each with its NFEs: 'holds at 4, 6; reversed at 8'."""
    by_verdict: dict[str, list[int]] = {}
    for nfe, outcome in sorted(verdicts.items()):
        by_verdict.setdefault(outcome, []).append(nfe)
    if len(by_verdict) <= 1:
        return next(iter(by_verdict), NOT_RECORDED)
    return "; ".join(f"{outcome} at {', '.join(map(str, nfes))}" for outcome, nfes in by_verdict.items())


def evidence(cells: Cells, teacher: str, claim: Claim) -> tuple[str, str]:
    """('NFE: A - B' for every NFE where A or B is recorded on ``teacher``, the teacher's verdict)."""
    nfes = sorted({n for (name, method, n) in cells if name == teacher and method in (claim.a, claim.b)})
    compared = {nfe: compare(cells, teacher, claim, nfe) for nfe in nfes}
    text = "; ".join(f"{nfe}: {diff}" for nfe, (diff, _) in compared.items()) or "-"
    return text, summary({nfe: outcome for nfe, (_, outcome) in compared.items()})


# --- the paper's numbers ---------------------------------------------------------------------------

def quoted(claim: Claim, label: str) -> pd.DataFrame:
    """The paper's numbers of ``label`` on the claim's teacher and metric: those of the claim's
    table, or, when it holds none, those of the paper's first table that does (paper_results.csv
    keeps a number a paper repeats under its first table only: S4S Table 3's S4S-Alt row is
    S4S Table 14's)."""
    numbers = paper_numbers(claim.paper_teacher, claim.paper_metric)
    rows = numbers[(numbers.paper == claim.paper) & (numbers.method == label) & numbers.nfe.notna()]
    own = rows[rows.table == claim.source]
    return own if not own.empty or rows.empty else rows[rows.table == rows.table.iloc[0]]


def paper_cell(claim: Claim) -> tuple[str, str]:
    """('teacher metric, NFE n: A vs B; ...' at the NFEs where the paper has both, or '-'; the
    source, naming the other tables the numbers came from)."""
    if not claim.paper_teacher:
        return "-", claim.source
    a, b = quoted(claim, claim.paper_a), quoted(claim, claim.paper_b)
    va, vb = dict(zip(a.nfe.astype(int), a.printed)), dict(zip(b.nfe.astype(int), b.printed))
    nfes = sorted(set(va) & set(vb))
    others = sorted((set(a.table) | set(b.table)) - {claim.source}) if nfes else []
    source = claim.source + (f" (numbers: {', '.join(others)})" if others else "")
    if not nfes:
        return "-", source
    pairs = "; ".join(f"{n}: {va[n]} vs {vb[n]}" for n in nfes)
    return f"{claim.paper_teacher} {claim.paper_metric}, NFE {pairs}", source


# --- the table -------------------------------------------------------------------------------------

def claims_frame(results_dir: Path, path: Path = CLAIMS) -> pd.DataFrame:
    """One row per claim: the claim, its source, the paper's numbers, then per recorded teacher our
    paired differences A - B per NFE and the verdict, and the claim's note."""
    cells = recorded_cells(results_dir)
    if not cells:
        raise GasbenchError(f"no records under {results_dir}; run `gasbench run --results-dir {results_dir}` first.")
    teachers = sorted({name for name, _, _ in cells})
    rows = []
    for claim in load_claims(path):
        paper, source = paper_cell(claim)
        row = {"claim": claim.text, "source": source, "paper (A vs B)": paper}
        for teacher in teachers:
            row[f"{teacher}: A - B"], row[teacher] = evidence(cells, teacher, claim)
        rows.append({**row, "note": claim.note})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """The table with each note as a numbered footnote of its claim, and how verdicts were decided."""
    notes = list(dict.fromkeys(note for note in frame.note if note))
    marked = [f"{claim} [{notes.index(note) + 1}]" if note else claim for claim, note in zip(frame.claim, frame.note)]
    table = frame.drop(columns="note").assign(claim=marked).to_markdown(index=False)
    footnotes = "".join(f"\n\n[{i}] {note}" for i, note in enumerate(notes, start=1))
    return (table + footnotes + f"\n\n_A - B: mean ± std over the seed sets of the per-seed-set differences of the "
            f"claim's metric; verdicts from one-sided paired t-tests at alpha = {ALPHA} (gasbench.paired)._")


def render_claims(results_dir: Path, fmt: str = "markdown", path: Path = CLAIMS) -> str:
    """The claims table as ``fmt`` (markdown or csv)."""
    if fmt not in FORMATS:
        raise GasbenchError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    frame = claims_frame(results_dir, path)
    return frame.to_csv(index=False) if fmt == "csv" else markdown(frame)
