"""`gasbench claims`: the papers' pairwise claims tested on recorded per-seed-set values."""

import io

import numpy as np
import pandas as pd
import pytest
from helpers import gasbench

from gasbench.claims import CLAIMS, COLUMNS, claims_frame, load_claims, paper_cell
from gasbench.core.errors import GasbenchError
from gasbench.core.records import SCHEMA_VERSION, cell_dir, write_json_atomic
from gasbench.core.registry import SOLVERS
from gasbench.paper import base_method, load_paper_results

SEEDS = [[50000, 50999], [51000, 51999], [52000, 52999]]
BASE = np.array([4.0, 3.0, 4.5])  # seed set 2 lowest for every method, as on digits; binary fractions: exact differences


def record(root, method, nfe, per_seed, metric="fd", seeds=SEEDS, teacher="digits"):
    values = np.asarray(per_seed, dtype=float)
    write_json_atomic(cell_dir(root, teacher, method, nfe) / "metrics.json", {
        "schema": SCHEMA_VERSION, "teacher": {"name": teacher}, "method": method, "nfe": nfe, "seeds": seeds,
        "solver": {"name": base_method(method)}, "training": None, "wall_time_s": 1.0,
        "metrics": {metric: float(values.mean())}, "metrics_per_seed_set": {metric: list(map(float, values))},
    })


def claims_file(tmp_path, *rows: str):
    path = tmp_path / "claims.csv"
    path.write_text(",".join(COLUMNS) + "\n" + "".join(f"{row}\n" for row in rows))
    return path


def verdicts(results, path, teacher="digits") -> dict[str, str]:
    frame = claims_frame(results, path)
    return dict(zip(frame.claim, frame[teacher]))


@pytest.fixture
def results(tmp_path):
    """ld3 is worse than gs by 0.25 on every seed set: separable although its unpaired error bar
    overlaps gs's. s4s differs by +0.5, -0.5, +0.25: not separable. s4s-alt is better than gs by
    0.25 on every seed set. euler has one seed set, heun other seed sets than gs."""
    root = tmp_path / "results"
    record(root, "gs", 4, BASE)
    record(root, "ld3", 4, BASE + 0.25)
    record(root, "s4s", 4, BASE + np.array([0.5, -0.5, 0.25]))
    record(root, "s4s-alt", 4, BASE - 0.25)
    record(root, "euler", 4, [4.0], seeds=SEEDS[:1])
    record(root, "heun", 4, BASE + 1.0, seeds=[[60000, 60999], [61000, 61999], [62000, 62999]])
    return root


def test_verdicts_from_the_paired_tests(results, tmp_path):
    path = claims_file(
        tmp_path,
        "gs,<,ld3,fd,GAS Table 2a,,,,,",
        "gs,<,s4s,fd,GAS Table 2a,,,,,",
        "gs,<,s4s-alt,fd,GAS Table 2a,,,,,",
        "gs,<,dlms,fd,GAS Table 2a,,,,,",
        "gs,<,euler,fd,GAS Table 2a,,,,,",
        "gs,<,heun,fd,GAS Table 2a,,,,,",
    )
    assert verdicts(results, path) == {
        "gs < ld3 (fd)": "holds", "gs < s4s (fd)": "not separable", "gs < s4s-alt (fd)": "reversed",
        "gs < dlms (fd)": "not recorded", "gs < euler (fd)": "not recorded", "gs < heun (fd)": "not recorded",
    }
    frame = claims_frame(results, path).set_index("claim")
    assert frame.loc["gs < ld3 (fd)", "digits: A - B"] == "4: -0.25 ± 0"
    assert frame.loc["gs < heun (fd)", "digits: A - B"] == "4: seeds differ"


def test_a_not_worse_claim(results, tmp_path):
    """`<=`: what the seed sets cannot separate holds; a significant loss is still reversed."""
    path = claims_file(tmp_path, "gs,<=,s4s,fd,GAS Table 2a,,,,,", "gs,<=,s4s-alt,fd,GAS Table 2a,,,,,",
                       "s4s-alt,<=,gs,fd,GAS Table 2a,,,,,")
    assert verdicts(results, path) == {"gs <= s4s (fd)": "holds", "gs <= s4s-alt (fd)": "reversed",
                                       "s4s-alt <= gs (fd)": "holds"}


def test_higher_is_better_metric_and_verdicts_per_nfe(tmp_path):
    root = tmp_path / "results"
    for nfe, gap in ((4, 1.0), (6, 0.0)):
        record(root, "gs", nfe, BASE + gap + np.array([0.0, 0.125, -0.125]), metric="psnr")
        record(root, "ld3", nfe, BASE, metric="psnr")
    record(root, "gs", 8, BASE, metric="psnr")
    path = claims_file(tmp_path, "gs,<,ld3,psnr,GAS Table 2a,,,,,", "ld3,<,gs,psnr,GAS Table 2a,,,,,")
    assert verdicts(root, path) == {"gs < ld3 (psnr)": "holds at 4; not separable at 6; not recorded at 8",
                                    "ld3 < gs (psnr)": "reversed at 4; not separable at 6; not recorded at 8"}


def test_every_recorded_teacher_gets_its_columns(results, tmp_path):
    record(results, "gs", 4, BASE, teacher="fashion")
    record(results, "ld3", 4, BASE - 0.25, teacher="fashion")
    frame = claims_frame(results, claims_file(tmp_path, "gs,<,ld3,fd,GAS Table 2a,,,,,"))
    assert list(frame.columns) == ["claim", "source", "paper (A vs B)", "digits: A - B", "digits",
                                   "fashion: A - B", "fashion", "note"]
    assert frame.loc[0, "digits"] == "holds" and frame.loc[0, "fashion"] == "reversed"


def test_the_papers_numbers_and_their_tables(tmp_path):
    claims = load_claims(claims_file(
        tmp_path,
        "gs,<,ld3,fd,GAS Table 2a,cifar10,fid,,,",
        "s4s-alt,<,s4s,fd,S4S Table 3,cifar10,fid,,,",
        "gs,<,gs+decouple=false,fd,GAS Eq. 20,,,,,",
        "s4s,<,ipndm+order=3,fd,S4S Table 2,cifar10,fid,s4s+schedule=logsnr,ipndm+order=3+schedule=logsnr,",
    ))
    assert paper_cell(claims[0]) == ("cifar10 fid, NFE 4: 4.41 vs 9.31; 6: 2.55 vs 3.35; 8: 2.25 vs 2.81; "
                                     "10: 2.18 vs 2.38", "GAS Table 2a")
    # S4S-Alt's row of S4S Table 3 repeats Table 14's, where paper_results.csv keeps it
    assert paper_cell(claims[1]) == ("cifar10 fid, NFE 4: 6.35 vs 8.25; 6: 2.67 vs 3.17; 8: 2.39 vs 2.61",
                                     "S4S Table 3 (numbers: S4S Table 14)")
    assert paper_cell(claims[2]) == ("-", "GAS Eq. 20")
    assert paper_cell(claims[3])[0].startswith("cifar10 fid, NFE 3: 75.88 vs 88.39; 4: 30.12 vs 34.88")


@pytest.mark.parametrize("row, message", [
    ("gs,>,ld3,fd,GAS Table 2a,,,,,", "relation '>'"),
    ("gs,<,ld4,fd,GAS Table 2a,,,,,", "'ld4' is not a registered solver"),
    ("gs,<,ld3,fdd,GAS Table 2a,,,,,", "metric 'fdd'"),
    ("gs,<,ld3,fd,LD3 Table 2,,,,,", "does not name a paper"),
    ("gs,<,ld3,fd,GAS Table 99,cifar10,fid,,,", "'GAS Table 99' is not a table of paper_results.csv"),
    ("gs,<,ld3,fd,GAS Table 2a,cifar10,,,,", "paper_teacher and paper_metric go together"),
])
def test_a_bad_claim_names_its_line(tmp_path, row, message):
    with pytest.raises(GasbenchError, match="line 3: ") as info:
        load_claims(claims_file(tmp_path, "gs,<,ld3,fd,GAS Table 2a,,,,,", row))
    assert message in str(info.value)


def test_the_shipped_claims():
    """Every claim names registered solvers and, where it quotes the paper, a table of
    paper_results.csv holding numbers of both methods."""
    claims = load_claims()
    assert len(claims) >= 15
    assert all(base_method(label) in SOLVERS for c in claims for label in (c.a, c.b))
    tables = set(load_paper_results().table)
    for claim in claims:
        if claim.paper_teacher:
            assert claim.source in tables
            assert paper_cell(claim)[0] != "-", f"{claim.text}: {claim.source} has no numbers of both methods"
    assert len({(c.a, c.relation, c.b, c.paper_teacher) for c in claims}) == len(claims), "a claim is listed twice"


def test_command_writes_between_the_markers(results, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "claims.md"
    doc.write_text("intro\n<!-- gasbench-table:claims:start -->\nstale table\n<!-- gasbench-table:claims:end -->\ntail\n")
    code, out, _ = gasbench(monkeypatch, capsys, "claims", "--results-dir", results, "--into", doc)
    text = doc.read_text()
    assert code == 0 and "stale table" not in text and text.startswith("intro\n") and text.endswith("tail\n")
    assert "| gs < ld3 (fd)" in text and "alpha = 0.05" in text and "| gs < ld3 (fd)" in out
    code, out, _ = gasbench(monkeypatch, capsys, "claims", "--results-dir", results, "--format", "csv")
    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert code == 0 and len(frame) == len(load_claims(CLAIMS))
    assert frame.set_index("claim").loc["gs < ld3 (fd)", "digits"] == "holds"


def test_command_bad_input(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "claims", "--results-dir", tmp_path / "none")
    assert code == 2 and "no records under" in err
    record(tmp_path / "r", "gs", 4, BASE)
    code, _, err = gasbench(monkeypatch, capsys, "claims", "--results-dir", tmp_path / "r", "--format", "latex")
    assert code == 2 and "--format latex" in err
