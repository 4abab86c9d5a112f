"""Metric directions: precision, recall, density and coverage rank by closeness to the teacher's own
value (a mode-dropping sampler can beat its teacher on them), fd by the lowest, in every table.

One real run on the analytic teacher writes the records; the precision values are then set so that
euler sits above the teacher, dpmpp3m just below it and heun far below: "higher is better" would
bold euler, "lower is better" heun, and closeness to the teacher dpmpp3m.
"""

from __future__ import annotations

import json
import shutil

import pytest

from gasbench.core.errors import GasbenchError
from gasbench.metrics import DIRECTIONS, get_metric, metric
from gasbench.core.records import read_record, write_json_atomic
from gasbench.core.registry import METRICS
from gasbench.report import build_report
from gasbench.runner import RunConfig, run
from gasbench.tables import render

PRECISION = {"teacher": 0.9, "euler": 0.99, "dpmpp3m": 0.88, "heun": 0.7}


def _config(results):
    return RunConfig(teacher="gmm", methods=["euler", "dpmpp3m", "heun"], nfes=[4], num_samples=64,
                     metrics=["fd", "precision"], results_dir=results)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = tmp_path_factory.mktemp("direction") / "results"
    run(_config(results))
    for path in results.glob("gmm/*/nfe*/metrics.json"):
        record = read_record(path)
        record["metrics"]["precision"] = PRECISION[record["method"]]
        write_json_atomic(path, record)
    return results


def _rows(markdown: str, metric: str) -> dict[str, str]:
    """The NFE=4 cell of each row of ``metric``'s markdown table."""
    table = markdown.split(f": {metric} (")[1].split("\n\n###")[0]
    return {cells[0]: cells[1] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in table.splitlines() if line.startswith("| "))
            if cells[0] != "Method"}


def test_naeem_metrics_rank_by_the_teacher_and_every_metric_declares_a_direction():
    assert {m: get_metric(m).direction for m in ("precision", "recall", "density", "coverage")} == dict.fromkeys(
        ("precision", "recall", "density", "coverage"), "teacher")
    assert get_metric("fd").direction == "lower" and get_metric("psnr").direction == "higher"
    assert all(entry.obj.direction in DIRECTIONS for entry in METRICS)


def test_markdown_bolds_the_method_closest_to_the_teacher_and_names_its_value(results):
    text = render(results, ["precision"])
    assert "### gmm: precision (closest to the teacher's 0.9 is best)" in text
    rows = _rows(text, "precision")
    assert rows["dpmpp3m"] == "**0.88**"  # 0.02 from the teacher
    assert rows["euler"] == "0.99" and rows["heun"] == "0.7"  # the highest and the lowest: raw, not bold
    assert rows["Teacher (unipc NFE 50)"] == "0.9"


def test_fd_still_bolds_the_lowest(results):
    text = render(results, ["fd"])
    assert "### gmm: fd (lower is better)" in text
    rows = {k: v for k, v in _rows(text, "fd").items() if not k.startswith("Teacher")}
    bold = [m for m, cell in rows.items() if cell.startswith("**")]
    fd = {m: read_record(results / "gmm" / m / "nfe4" / "metrics.json")["metrics"]["fd"] for m in rows}
    assert bold == [min(fd, key=fd.get)]


def test_latex_and_html_report_rank_the_same_way(results):
    latex = render(results, ["precision"], fmt="latex")
    assert "% gmm: precision (closest to the teacher's 0.9 is best)" in latex
    assert "\\textbf{0.88}" in latex and "\\textbf{0.99}" not in latex
    page = build_report(results)
    assert "gmm: precision (closest to the teacher&#x27;s 0.9 is best)" in page
    assert "<th scope=\"row\">dpmpp3m</th><td><strong>0.88</strong></td>" in page
    assert "<th scope=\"row\">euler</th><td>0.99</td>" in page


def test_without_a_teacher_row_nothing_is_bold_and_the_note_says_why(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    shutil.rmtree(copy / "gmm" / "teacher")
    text = render(copy, ["precision", "fd"])
    precision = text.split("### gmm: fd")[0]
    assert "### gmm: precision (closest to the teacher is best)" in precision and "**" not in precision
    assert "_Nothing is bold: precision ranks by closeness to the teacher's own value, and no teacher row" in precision
    assert "**" in text.split("### gmm: fd")[1]  # fd needs no teacher row to rank
    assert "% Nothing is bold: precision" in render(copy, ["precision"], fmt="latex")
    assert '<p class="note">Nothing is bold: precision' in build_report(copy)


def test_new_records_store_the_direction_and_old_ones_with_higher_is_better_still_load(results, tmp_path):
    record = read_record(results / "gmm" / "euler" / "nfe4" / "metrics.json")
    assert record["metric_provenance"]["precision"]["direction"] == "teacher"
    assert "higher_is_better" not in record["metric_provenance"]["precision"]
    old = tmp_path / "results"
    shutil.copytree(results, old)
    for path in old.glob("gmm/*/nfe*/metrics.json"):  # as gasbench wrote them before directions
        record = read_record(path)
        for name, provenance in record["metric_provenance"].items():
            provenance["higher_is_better"] = provenance.pop("direction") == "higher" or name == "precision"
        write_json_atomic(path, record)
    assert render(old, ["precision", "fd"]) == render(results, ["precision", "fd"])
    before = {p: p.read_bytes() for p in old.rglob("metrics.json")}
    run(_config(old))  # a rerun reuses them as they are
    assert {p: p.read_bytes() for p in old.rglob("metrics.json")} == before
    assert json.loads(before[old / "gmm" / "heun" / "nfe4" / "metrics.json"])["metric_provenance"]["fd"][
        "higher_is_better"] is False


@pytest.mark.parametrize("direction,paired,message", [
    ("up", False, "direction 'up' is not one of lower, higher, teacher"),
    ("teacher", True, "a paired metric compares with the teacher's own sample"),
])
def test_a_bad_direction_is_one_clear_error(direction, paired, message):
    with pytest.raises(GasbenchError, match=message):
        metric("test-direction", direction=direction, paired=paired, description="-")
    assert "test-direction" not in {entry.name for entry in METRICS}
