"""What a new user meets first, through the real command line: progress when output is a file,
the CPU threads they ask for, and one clear line (not a traceback) for each small mistake."""

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import RUN, SLOW_TEACHER, gasbench

from gasbench.config import locate
from gasbench.core.registry import SOLVERS

PROGRESS_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] slow-gmm: .*\d+/\d+ \(\d+%\).* elapsed \d+:\d\d:\d\d +(eta|done)")

NONLINEAR_PLUGIN = '''
from gasbench.solvers.base import handcrafted_solver


@handcrafted_solver("test-nonlinear")
def loop(model, x, sigmas):
    for n in range(len(sigmas) - 1):
        denoised = model(x, sigmas[n])
        x = denoised + (x - denoised) * (x - denoised) * (sigmas[n + 1] / sigmas[n])
    return x
'''


def test_progress_lines_while_a_run_writes_to_a_file(tmp_path):
    """With stderr a pipe (nohup, CI, Slurm), plain timestamped progress lines arrive while the run is
    still going, at the interval asked for, and no bar drawing characters."""
    plugin = tmp_path / "slow_teacher.py"
    plugin.write_text(SLOW_TEACHER)
    env = {**os.environ, "GASBENCH_HOME": str(tmp_path / "home"), "GASBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "GASBENCH_PROGRESS_INTERVAL": "0.3", "STARTED": str(tmp_path / "started")}
    env.pop("COLUMNS", None)
    command = [sys.executable, "-m", "gasbench", "run", "--plugin", plugin, "-d", "slow-gmm", "-m", "euler",
               "--nfe", "4", "-n", "16", "--metrics", "rmse", "--results-dir", tmp_path / "results"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_while_running, lines = [], []

    def read():
        for line in process.stderr:
            lines.append(line)
            if PROGRESS_LINE.match(line):
                seen_while_running.append(process.poll() is None)

    reader = threading.Thread(target=read)
    reader.start()
    process.wait(timeout=300)
    reader.join(timeout=60)
    assert process.returncode == 0, "".join(lines)[-3000:]
    assert any(seen_while_running), "".join(lines)[-3000:]
    # the run's own line counts cells, so its ETA is over the whole run
    assert any(re.match(r"^\[.{8}\] slow-gmm: cells \(now euler NFE 4\)  1/1 \(100%\).* done", line) for line in lines)
    assert not any("━" in line for line in lines)


def test_threads_are_the_users_and_recorded(tmp_path, monkeypatch, capsys, request):
    """--threads sets torch's CPU threads for the run and the record says so; 0 is refused."""
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    results = tmp_path / "results"
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "euler", "--threads", "1", "--results-dir", results)
    assert code == 0, err
    record = json.loads((results / "gmm" / "euler" / "nfe4" / "metrics.json").read_text())
    assert record["environment"]["threads"] == 1 and record["run_config"]["threads"] == 1
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "euler", "--threads", "0", "--results-dir", results)
    assert code == 2 and "--threads must be at least 1, got 0" in err and "Traceback" not in err


def test_a_nonlinear_loop_is_named_not_an_internal_error(tmp_path, monkeypatch, capsys, request):
    request.addfinalizer(lambda: SOLVERS.unregister("test-nonlinear"))
    plugin = tmp_path / "nonlinear.py"
    plugin.write_text(NONLINEAR_PLUGIN)
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "test-nonlinear", "--plugin", plugin,
                            "--results-dir", tmp_path / "results")
    message = " ".join(err.split())
    assert code == 2, err
    assert "solver loops may only combine vectors linearly" in message and "a vector times a vector" in message
    assert "internal error" not in message


def test_help_examples_and_debug_are_real(monkeypatch, capsys):
    """Every --config file the run help names exists (as shipped), and --debug is documented."""
    code, out, _ = gasbench(monkeypatch, capsys, "run", "--help")
    assert code == 0
    named = re.findall(r"--config (\S+\.yaml)", out)
    assert named and all(locate(path).is_file() for path in named), named
    code, out, _ = gasbench(monkeypatch, capsys, "--help")
    assert code == 0 and "--debug" in out


def test_verify_names_the_missing_plugin(tmp_path, monkeypatch, capsys, request):
    plugin = tmp_path / "mine.py"
    plugin.write_text(NONLINEAR_PLUGIN.replace("test-nonlinear", "test-mine").replace(
        "denoised + (x - denoised) * (x - denoised) * (sigmas[n + 1] / sigmas[n])", "denoised + (x - denoised) * (sigmas[n + 1] / sigmas[n])"))
    results = tmp_path / "results"
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "test-mine", "--plugin", plugin, "--results-dir", results)
    assert code == 0, err
    SOLVERS.unregister("test-mine")
    code, _, err = gasbench(monkeypatch, capsys, "verify", results / "gmm" / "test-mine" / "nfe4")
    message = " ".join(err.split())
    assert code == 2 and "'test-mine'" in message and "--plugin" in message and str(plugin) in message


def test_show_on_a_missing_path_says_so(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "show", tmp_path / "results" / "digits" / "gs" / "nfe4")
    assert code == 2 and "does not exist" in err


def test_a_repeated_nfe_is_one_cell(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, *RUN[:3], "--nfe", "4, 4", *RUN[5:], "-m", "euler",
                            "--results-dir", tmp_path / "results")
    assert code == 0, err
    assert [p.parent.name for p in (tmp_path / "results").rglob("metrics.json")] == ["nfe4"]
    assert "1 cells recorded" in " ".join(err.split())


@pytest.mark.parametrize("command", [["list", "solvers"], ["teachers"]])
def test_tables_in_a_pipe_are_not_cut_to_80_columns(tmp_path, command):
    env = {**os.environ, "GASBENCH_HOME": str(tmp_path / "home"), "GASBENCH_OFFLINE": "1"}
    env.pop("COLUMNS", None)
    out = subprocess.run([sys.executable, "-m", "gasbench", *command], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert max(map(len, out.stdout.splitlines())) > 80
