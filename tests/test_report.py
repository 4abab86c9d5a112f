"""`gasbench report`: one self-contained HTML page of a small run on the analytic teacher (three
handcrafted solvers and a 3-iteration GS fit, two seed sets), checked as text and in Chromium."""

import base64
import io
import re
import shutil
import subprocess
from html import escape

import numpy as np
import pytest
from PIL import Image

from gasbench.core.errors import GasbenchError
from gasbench.report import _metric_figure, _styles, build_report
from gasbench.runner import RunConfig, run
from gasbench.tables import load_frame, render

GS = "gs+iterations=3+train_size=64"
METHODS = ["dpmpp3m", "euler", GS, "heun"]
NFES = [4, 6]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">')


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    run(RunConfig(teacher="gmm", methods=["euler", "dpmpp3m", "heun", "gs"], nfes=NFES, num_samples=32, seed_sets=2,
                  metrics=["rmse", "fd"], results_dir=results, solver_args={"iterations": "3", "train_size": "64"}))
    return results


@pytest.fixture(scope="module")
def page(results):
    return build_report(results)


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(page):
    images = DATA_URI.findall(page)
    assert len(images) == page.count("<img ")
    for data, _ in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    alts = [alt for _, alt in images]
    # the teacher's grid and one per cell, side by side from the same seeds
    assert "gmm reference samples" in alts
    assert all(f"{m} NFE {n} samples" in alts for m in METHODS for n in NFES)
    for figure in ("gmm fd against NFE", "gmm rmse against NFE", "gmm learned and handcrafted noise levels",
                   f"{GS} coefficients", "gmm training time"):
        assert figure in alts
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page and "<link" not in page


def test_leaderboards_are_the_markdown_tables_in_html(results, page):
    """Every row of `gasbench table` (markdown, best per column in bold) appears as an HTML row,
    the bold cell as <strong>; the costs are tabled too."""
    for metric in ("fd", "rmse", "train_s", "sample_s"):
        markdown = render(results, [metric])
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
                if line.startswith("| ") and not line.startswith("| Method")]
        assert len(rows) >= (1 if metric == "train_s" else len(METHODS))
        for label, *cells in rows:
            html_cells = "".join(f"<td><strong>{escape(c.strip('*'))}</strong></td>" if c.startswith("**")
                                 else f"<td>{escape(c)}</td>" for c in cells)
            assert f'<th scope="row">{escape(label)}</th>{html_cells}</tr>' in page, (metric, label)
    assert "Teacher (unipc NFE 50)" in page and "±" in page  # the teacher's fd row; two seed sets
    assert f"{GS} NFE 4</th><td>3</td>" in page  # the fit summary, iterations first


def test_metric_plot_has_a_line_per_method_error_bars_and_the_teacher(results):
    frame = load_frame(results)
    fig = _metric_figure(frame, "gmm", "fd", _styles(METHODS, {GS: True}))
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    assert sorted(bars) == METHODS and all(c.has_yerr for c in bars.values())
    for method, container in bars.items():
        rows = frame[(frame.method == method) & (frame.metric == "fd")].sort_values("nfe")
        np.testing.assert_allclose(container.lines[0].get_ydata(), rows.value)
    teacher = frame[(frame.method == "teacher") & (frame.metric == "fd")].value.item()
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_label().startswith("teacher")] == [teacher]


def test_command_writes_next_to_the_results_or_to_out(results, tmp_path, monkeypatch, capsys):
    from helpers import gasbench

    monkeypatch.setattr("gasbench.report.build_report", lambda directory: f"<p>{directory}</p>")
    code, _, err = gasbench(monkeypatch, capsys, "report", "--results-dir", results)
    assert code == 0 and (results / "report.html").read_text() == f"<p>{results}</p>", err
    code, _, err = gasbench(monkeypatch, capsys, "report", "--results-dir", results, "--out", tmp_path / "r.html")
    assert code == 0 and (tmp_path / "r.html").read_text() == f"<p>{results}</p>", err



def test_an_empty_directory_is_one_error(tmp_path):
    with pytest.raises(GasbenchError, match="no results recorded under .*Run `gasbench run` first"):
        build_report(tmp_path / "empty")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_tables_and_images(results, page, tmp_path):
    report = tmp_path / "report.html"
    report.write_text(page)
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--force-device-scale-factor=1", "--window-size=1200,3000"]
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60).stdout
    assert dom.count("<tr") == page.count("<tr") > 4 * len(METHODS)  # leaderboards, sample grids, fits
    assert f'<th scope="row">{GS}</th>' in dom
    assert len(DATA_URI.findall(dom)) == page.count("<img ")
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=60, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (3000, 1200, 3) and pixels.std() > 35  # text and tables alone: about 23
    # the figures were drawn: saturated pixels are about 23,000 with them, 3,000 (links, bold cells) without
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 100).sum() > 10_000
