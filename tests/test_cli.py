"""The command line: run/table on the analytic teacher, and one clear message for bad input."""

import json

import pytest
from helpers import gasbench


def test_run_writes_one_record_per_cell(recorded):
    records = sorted(recorded.glob("gmm/*/nfe*/metrics.json"))
    assert len(records) == 6
    record = json.loads(records[0].read_text())
    assert record["nfe_measured"] == record["nfe"]
    assert set(record["metrics"]) == {"rmse", "psnr"}
    assert record["seeds"] == [[50000, 50031]]
    assert (records[0].parent / "samples.png").stat().st_size > 0


def test_table_markdown_bolds_best_per_column(recorded, monkeypatch, capsys):
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded)
    assert code == 0 and "| Method" in out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and "Method" not in line]
    for col in (1, 2):  # NFE=4, NFE=6: exactly one bold cell, and it holds the column minimum
        cells = [r[col] for r in rows]
        values = [float(c.strip("*")) for c in cells]
        bold = [i for i, c in enumerate(cells) if c.startswith("**")]
        assert bold == [values.index(min(values))]
    # each row runs on its own paper's schedule and says so, so the solvers' ranking here is not
    # their order alone (euler on DDIM's time-quadratic beats dpmpp3m on logSNR on this teacher)
    assert {r[0]: r[-1] for r in rows} == {"dpmpp3m": "logsnr", "euler": "time-quadratic", "heun": "edm"}


def test_rerun_reuses_records(recorded, monkeypatch, capsys):
    path = recorded / "gmm" / "euler" / "nfe4" / "metrics.json"
    before = path.read_text()
    code, _, _ = gasbench(
        monkeypatch, capsys, "run", "--dataset", "gmm", "--methods", "euler", "--nfe", "4",
        "-n", "32", "--results-dir", recorded,
    )
    assert code == 0 and path.read_text() == before


def test_csv_and_latex(recorded, monkeypatch, capsys):
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "--format", "csv", "--metric", "psnr")
    assert code == 0 and out.startswith("Method,NFE=4,NFE=6")
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "--format", "latex")
    assert code == 0 and "\\textbf{" in out


BAD_INPUTS = [
    (["run", "--methods", "dpmpp9m"], "Unknown solver 'dpmpp9m'"),
    (["run", "--dataset", "cifar-1000"], "Unknown teacher 'cifar-1000'"),
    (["run", "--dataset", "gmm", "--nfe", "0"], "NFE must be at least 1"),
    (["run", "--dataset", "gmm", "--nfe", "-3"], "NFE must be at least 1"),
    (["run", "--dataset", "gmm", "--nfe", "four"], "--nfe must be integers"),
    (["run", "--dataset", "gmm", "--methods", "heun", "--nfe", "5"], "cannot run at NFE 5"),
    (["run", "--dataset", "gmm", "--schedule", "cosine"], "Unknown schedule 'cosine'"),
    (["run", "--dataset", "gmm", "--methods", "euler", "--solver-arg", "order=2"], "no selected method has the option"),
    (["run", "--dataset", "gmm", "--methods", "ipndm", "--solver-arg", "order=two"], "not a valid int"),
    (["run", "--dataset", "gmm", "--methods", "ipndm", "--solver-arg", "order=7"], "order"),
    (["table", "--metric", "fidd"], "Unknown metric 'fidd'"),
    (["table", "--format", "html"], "unknown table format"),
    (["list", "gizmos"], "cannot list 'gizmos'"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_message(args, message, recorded, monkeypatch, capsys):
    before = {p: p.read_bytes() for p in recorded.rglob("*") if p.is_file()}
    code, out, err = gasbench(monkeypatch, capsys, *args, "--results-dir", recorded) if args[0] != "list" \
        else gasbench(monkeypatch, capsys, *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err + out
    after = {p: p.read_bytes() for p in recorded.rglob("*") if p.is_file()}
    assert after == before


def test_unwritable_results_dir(tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    code, _, err = gasbench(
        monkeypatch, capsys, "run", "--dataset", "gmm", "--methods", "euler", "--nfe", "4",
        "-n", "4", "--results-dir", blocked / "sub",
    )
    assert code == 2 and "cannot write results" in err and "Traceback" not in err


def test_corrupted_teacher_weights(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from gasbench.teachers.builtin import DigitsTeacher

    bad = tmp_path / "digits.safetensors"
    bad.write_bytes(b"garbage")
    monkeypatch.setattr(DigitsTeacher, "weights", replace(DigitsTeacher.weights, shipped=bad))
    code, _, err = gasbench(monkeypatch, capsys, "run", "--methods", "euler", "--nfe", "4", "-n", "4",
                            "--results-dir", tmp_path / "r")
    assert code == 2 and "corrupt or not the pinned one" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "digits").exists()


def test_list_shows_everything(monkeypatch, capsys):
    code, out, _ = gasbench(monkeypatch, capsys, "list")
    assert code == 0
    for name in ("dpmpp3m", "unipc-bh2", "ipndm", "heun", "euler", "digits", "gmm", "logsnr", "gits", "psnr"):
        assert name in out


def test_table_into_document(recorded, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "README.md"
    doc.write_text("# title\n<!-- gasbench-table:start -->\nSTALE-CONTENT\n<!-- gasbench-table:end -->\ntail\n")
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "--into", doc)
    text = doc.read_text()
    assert code == 0 and "STALE-CONTENT" not in text and "| dpmpp3m" in text and text.endswith("tail\n")
    doc.write_text("no markers")
    code, _, err = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "--into", doc)
    assert code == 2 and "no '<!-- gasbench-table:start -->'" in err and doc.read_text() == "no markers"


def test_table_selects_methods_and_fills_a_named_block(recorded, tmp_path, monkeypatch, capsys):
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "-m", "dpm*,euler", "--exclude", "euler")
    assert code == 0 and "| dpmpp3m" in out and "euler" not in out and "heun" not in out
    doc = tmp_path / "README.md"
    blocks = "<!-- gasbench-table:start -->\nmain\n<!-- gasbench-table:end -->\n<!-- gasbench-table:abl:start -->\nSTALE-CONTENT\n<!-- gasbench-table:abl:end -->\n"
    doc.write_text(blocks)
    code, _, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", recorded, "-m", "heun", "--into", doc, "--block", "abl")
    text = doc.read_text()
    assert code == 0 and "main" in text and "STALE-CONTENT" not in text and "| heun" in text and "dpmpp3m" not in text


def test_seeds_and_metrics_options_and_multi_metric_table(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    code, out, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "40",
                              "--seeds", "2", "--metrics", "fd,rmse", "--results-dir", results)
    assert code == 0, err
    assert "### gmm: fd" in out and "Teacher (unipc NFE 50)" in out and "±" in out
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", results, "--metric", "fd,rmse")
    assert code == 0 and "### gmm: fd" in out and "### gmm: rmse" in out
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "40",
                            "--seeds", "0", "--results-dir", results)
    assert code == 2 and "--seeds must be at least 1" in err


def test_unknown_metric_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "8",
                            "--metrics", "fdd", "--results-dir", tmp_path / "r")
    assert code == 2 and "fdd" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_corrupt_trajectory_shard_stops_the_run_before_any_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path / "home"))
    args = ("run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "8")
    code, _, err = gasbench(monkeypatch, capsys, *args, "--results-dir", tmp_path / "first")
    assert code == 0, err
    [shard] = list((tmp_path / "home" / "trajectories").glob("gmm/*/shard-00000.safetensors"))
    shard.write_bytes(shard.read_bytes()[:50])
    code, _, err = gasbench(monkeypatch, capsys, *args, "--results-dir", tmp_path / "second")
    assert code == 2 and "is corrupt" in err and "delete it and rerun" in err and "Traceback" not in err
    assert not list((tmp_path / "second").glob("**/metrics.json"))


def test_run_prints_each_methods_time_share_and_table_shows_costs(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    code, out, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler,ld3", "--nfe", "3", "-n", "16",
                              "--solver-arg", "iterations=3", "--results-dir", results)
    assert code == 0, err
    share = next(line for line in err.splitlines() if line.startswith("time per method:"))
    assert "ld3" in share and "euler" in share and "%" in share
    code, out, _ = gasbench(monkeypatch, capsys, "table", "--results-dir", results, "--metric", "train_s,sample_s")
    record = json.loads((results / "gmm" / "ld3+iterations=3" / "nfe3" / "metrics.json").read_text())
    assert code == 0 and "### gmm: train_s (lower is better)" in out and "### gmm: sample_s" in out
    train_rows = out.split("### gmm: sample_s")[0]
    assert "| ld3+iterations=3" in train_rows and "euler" not in train_rows  # handcrafted cells have no training
    assert f"{record['training']['wall_time_s']:.4g}" in train_rows
