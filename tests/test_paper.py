"""The papers' reported numbers: the CSV's integrity, names as gasbench spells them, values the
papers' prose confirms, and `gasbench table --with-paper` beside recorded results."""

from io import StringIO

import pandas as pd
import pytest
from helpers import gasbench

from gasbench.core.errors import GasbenchError
from gasbench.paper import COLUMNS, base_method, label_options, load_paper_results, paper_numbers
from gasbench.core.records import SCHEMA_VERSION, TEACHER_LABEL, cell_dir, write_json_atomic
from gasbench.core.registry import SCHEDULES, SOLVERS

# Methods gasbench does not implement, under the papers' own names (paper.py's docstring)
PAPER_ONLY = {
    "dpm-solver-v3", "deis", "amed-plugin", "usf", "gits", "bns", "cd", "pd", "ecm", "ict-deep",
    "dpm-solver-2s", "dpm-solver-s4s-3s", "consistent-dpm-solver-s4s-2s", "joint-obj", "s4s-global-phi",
    "s4s-alt-global-phi", "gas-traditional", "gs-from-ffhq", "gas-from-ffhq", "gs-from-afhqv2", "gas-from-afhqv2",
    "dlms-without-bottleneck-feature", "dlms-without-high-order-initialization", "dlms-without-inception-distance",
    "dlms-without-time-scaling", "dlms-without-adaptive-time-schedule", "handcrafted-best",
}
PAPER_ONLY_SCHEDULES = {"dmn", "ld3"}  # DMN's and LD3's steps under another solver (S4S's grids)


def test_csv_parses_with_one_row_per_number():
    results = load_paper_results()
    assert list(results.columns) == [*COLUMNS, "printed"]
    assert set(results.paper) == {"gas", "s4s", "dlms"}
    assert str(results.nfe.dtype) == "Int64" and results.value.dtype == float
    counts = results.groupby("table").size()
    # whole tables, counted cell by cell from the papers (see paper.py's docstring)
    assert counts["GAS Table 2a"] == 3 * (11 * 4 + 1)
    assert counts["GAS Table 2c"] == 6 * 4 + 4
    assert counts["S4S Table 14"] == 7 * 7 * 8 + 8
    assert counts["S4S Table 16"] == 7 * 6 * 6 + 6
    assert counts["DLMS Table 5"] == 4 * 4 * 7 + 3 * 7 + 4 * 6
    assert len(results) == 2663


def test_names_are_spelled_as_gasbench_spells_them():
    results = load_paper_results()
    assert set(results.teacher) == {"cifar10", "ffhq", "afhqv2", "lsun-bedroom", "imagenet256", "sd15", "sd14",
                                    "imagenet64", "imagenet256-guided-diffusion"}
    registered = {entry.name: entry.obj for entry in SOLVERS}
    schedules = set(SCHEDULES.names()) | PAPER_ONLY_SCHEDULES
    paper_only = set()
    for label in sorted(set(results.method)):
        name, options = base_method(label), label_options(label)
        assert list(options) == sorted(options), label
        if name == TEACHER_LABEL:
            assert not options
        elif name in registered:
            assert set(options) <= set(registered[name].options), label
            assert options.get("schedule", "logsnr") in schedules, label
        else:
            with pytest.raises(GasbenchError):  # not an alias of a registered solver either
                SOLVERS.resolve(name)
            paper_only.add(name)
    assert paper_only == PAPER_ONLY


def value(table, teacher, method, nfe, metric="fid"):
    results = load_paper_results()
    row = results[(results.table == table) & (results.teacher == teacher) & (results.method == method)
                  & (results.metric == metric) & (results.nfe == nfe if nfe else results.nfe.isna())]
    assert len(row) == 1, (table, teacher, method, nfe)
    return row.iloc[0]["printed"]


@pytest.mark.parametrize("table,teacher,method,nfe,printed", [
    # GAS Sec. 4.1 and App. C.2 quote these from its Tables 2 and 13
    ("GAS Table 2a", "ffhq", "s4s-alt", 4, "10.63"),
    ("GAS Table 2a", "ffhq", "gas", 4, "7.86"),
    ("GAS Table 2a", "afhqv2", "gas", 4, "4.48"),
    ("GAS Table 2a", "ffhq", "gas", 6, "3.79"),
    ("GAS Table 2b", "imagenet256", "gas", 4, "5.38"),
    ("GAS Table 2b", "lsun-bedroom", "gas", 5, "4.60"),
    ("GAS Table 2c", "sd15", "gas", 4, "14.71"),
    ("GAS Table 13a", "cifar10", "gs", 6, "2.44"),
    ("GAS Table 2a", "cifar10", TEACHER_LABEL, None, "2.03"),
    # S4S Figures 5-7 quote these from its Tables 13-15 (the schedule and solver columns mapped)
    ("S4S Table 14", "cifar10", "ipndm+order=3+schedule=logsnr", 5, "20.49"),
    ("S4S Table 14", "cifar10", "s4s+schedule=ld3", 5, "4.84"),
    ("S4S Table 14", "cifar10", "s4s-alt", 5, "3.73"),
    ("S4S Table 15", "ffhq", "ipndm+order=3+schedule=logsnr", 6, "16.15"),
    ("S4S Table 15", "ffhq", "s4s+schedule=ld3", 6, "5.45"),
    ("S4S Table 13", "afhqv2", "ipndm+order=3+schedule=logsnr", 7, "5.92"),
    ("S4S Table 13", "afhqv2", "s4s+schedule=ld3", 7, "2.61"),
    ("S4S Table 13", "afhqv2", "s4s-alt", 7, "2.56"),
    # the DLMS abstract quotes these (5 NFE) from its Table 5
    ("DLMS Table 5", "cifar10", "dlms", 5, "3.23"),
    ("DLMS Table 5", "imagenet64", "dlms", 5, "7.16"),
    ("DLMS Table 5", "lsun-bedroom", "dlms", 5, "5.44"),
    ("DLMS Table 5", "sd15", "dlms", 5, "12.52"),
])
def test_values_the_papers_quote_in_their_text(table, teacher, method, nfe, printed):
    assert value(table, teacher, method, nfe) == printed


def test_values_keep_their_printed_digits_and_lpips_serves_both_backbones():
    assert value("GAS Table 8", "imagenet256", "gs", 4, "precision") == "0.90"
    vgg = paper_numbers("cifar10", "lpips-vgg")
    assert set(vgg.metric) == {"lpips"} and set(vgg.table) == {"GAS Table 3"}
    assert vgg[(vgg.method == "gs") & (vgg.nfe == 10)].iloc[0]["value"] == 0.010
    fid = paper_numbers("cifar10", "fid")
    assert set(fid.metric) == {"fid"} and set(fid.teacher) == {"cifar10"}
    assert paper_numbers("digits", "fid").empty


GOOD = "gas,GAS Table 2a,cifar10,gs,4,fid,4.41,\n"


@pytest.mark.parametrize("line,message", [
    ("gas,GAS Table 2a,cifar10,gs,4,fid,4.41,\n", "listed more than once"),
    ("gas,S4S Table 2,cifar10,gs,6,fid,1,\n", "does not name the GAS paper"),
    ("gas,GAS Table 2a,cifar10,GS (Ours),6,fid,1,\n", "not a label"),
    ("gas,GAS Table 2a,cifar10,ipndm+schedule=gits+order=3,6,fid,1,\n", "out of order"),
    ("gas,GAS Table 2a,cifar10,gs,six,fid,1,\n", "not a positive integer"),
    ("gas,GAS Table 2a,cifar10,gs,6,fid,n/a,\n", "not a number"),
    ("lcm,LCM Table 1,cifar10,gs,6,fid,1,\n", "paper 'lcm'"),
])
def test_a_bad_row_is_one_error_naming_its_line(tmp_path, line, message):
    path = tmp_path / "paper_results.csv"
    path.write_text(",".join(COLUMNS) + "\n" + GOOD + line)
    with pytest.raises(GasbenchError, match=message) as error:
        load_paper_results(path)
    assert "line 3" in str(error.value) and str(path) in str(error.value)


def record(root, teacher, method, nfe, metrics):
    """A minimal record of the current schema, as `gasbench run` writes one per cell."""
    write_json_atomic(cell_dir(root, teacher, method, nfe) / "metrics.json", {
        "schema": SCHEMA_VERSION, "teacher": {"name": teacher}, "method": method, "nfe": nfe,
        "solver": {"name": "unipc" if method == TEACHER_LABEL else method}, "metrics": metrics,
        "training": None, "wall_time_s": 1.0,
    })


@pytest.fixture
def cifar10_results(tmp_path):
    root = tmp_path / "results"
    for nfe, (gs, dpm) in {4: (5.01, 44.0), 6: (2.71, 12.9)}.items():
        record(root, "cifar10", "gs", nfe, {"fid": gs})
        record(root, "cifar10", "dpmpp3m", nfe, {"fid": dpm})
    record(root, "cifar10", TEACHER_LABEL, 20, {"fid": 2.11})
    return root


def rows_of(markdown):
    """Method -> cells of the markdown table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]
    return [(r[0], r[1:]) for r in rows if r[0] != "Method"]


def test_with_paper_puts_published_rows_beneath_ours(cifar10_results, monkeypatch, capsys):
    code, out, err = gasbench(monkeypatch, capsys, "table", "--results-dir", cifar10_results, "--with-paper",
                              "-m", "gs,gas,dpmpp3m")
    assert code == 0, err
    rows = rows_of(out)
    labels = [label for label, _ in rows]
    cells = dict(rows)
    assert cells["gs"] == ["**5.01**", "**2.71**"] and cells["gs (GAS Table 2a)"] == ["4.41", "2.55"]
    assert labels.index("gs (GAS Table 2a)") == labels.index("gs") + 1
    assert labels.index("dpmpp3m (GAS Table 2a)") == labels.index("dpmpp3m") + 1
    assert labels[:3] == ["Teacher (unipc NFE 20)", "teacher (GAS Table 2a)", "teacher (S4S Fig. 5)"]
    assert cells["teacher (GAS Table 2a)"] == ["2.03", "2.03"]
    # a method we did not run: the paper's numbers, our cells absent; '-' where the paper has none
    assert cells["gas (GAS Table 2a)"] == ["4.05", "2.49"] and cells["gas (GAS Table 13a)"] == ["3.98", "-"]
    assert not any(label.startswith(("ipndm", "s4s")) for label in labels)  # -m selects published rows too
    assert "- ld3" not in out and "- teacher (GAS Table 2a): UniPC-bh1 order 3" in out

    code, plain, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", cifar10_results)
    assert code == 0 and "(GAS Table" not in plain and "published" not in plain


def test_with_paper_in_csv_and_latex(cifar10_results, monkeypatch, capsys):
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", cifar10_results, "--with-paper",
                            "-m", "gs", "--format", "csv")
    assert code == 0
    table = pd.read_csv(StringIO(out))
    assert list(table.columns) == ["Method", "NFE=4", "NFE=6", "NFE=4 std", "NFE=6 std", "source", "note",
                                   "teacher", "metric"]
    gs = table[table.Method == "gs"].set_index("source")
    assert gs.loc["gasbench", "NFE=4"] == 5.01 and gs.loc["GAS Table 2a", "NFE=4"] == 4.41
    assert gs.loc["GAS Table 13a", "NFE=6"] == 2.44 and pd.isna(gs.loc["GAS Table 13a", "NFE=4"])
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", cifar10_results, "--with-paper",
                            "-m", "gs*", "--format", "latex")
    assert code == 0 and "\\textbf{5.01}" in out and "gs (GAS Table 2a) & 4.41 & 2.55" in out
    assert "train\\_size=1400 (GAS Table 12a)" in out and "% teacher (GAS Table 2a): " in out


def test_teacher_without_published_numbers_prints_a_note(tmp_path, monkeypatch, capsys):
    record(tmp_path, "mnist-toy", "gs", 4, {"fid": 3.0})
    record(tmp_path, "imagenet64", "gs", 13, {"fid": 3.0})
    record(tmp_path, "cifar10", "gs", 13, {"fid": 3.0})
    code, out, err = gasbench(monkeypatch, capsys, "table", "--results-dir", tmp_path, "--with-paper")
    assert code == 0, err
    assert "_No published fid numbers for teacher 'mnist-toy' in the GAS, S4S or DLMS tables._" in out
    assert ("_The papers report fid for teacher 'imagenet64' only at NFE 4, 5, 6, 7, 8, 9, 10, "
            "none of which is measured here._") in out
    # a teacher's own published FID holds at any NFE, the methods' only at theirs
    cifar10 = out.split("### imagenet64")[0]
    assert [label for label, _ in rows_of(cifar10)] == ["teacher (GAS Table 2a)", "teacher (S4S Fig. 5)", "gs"]
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", tmp_path, "--with-paper",
                            "--format", "latex", "--teacher", "mnist-toy")
    assert code == 0 and "% No published fid numbers for teacher 'mnist-toy'" in out
