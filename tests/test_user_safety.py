"""What a run must never do to a user's results, through the real command line: exit 0 when
interrupted, let a plugin take a built-in's name, reuse a record of code that has changed since,
or replace a file it cannot read. Each stop is one message, and the recorded files stay as they were."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import RUN, SLOW_TEACHER, gasbench

from gasbench.core.registry import SOLVERS

# a plugin solver: first Euler, then the same file edited to damp the step
PLUGIN = '''
from gasbench.solvers.base import handcrafted_solver


@handcrafted_solver("{name}")
def loop(model, x, sigmas):
    for n in range(len(sigmas) - 1):
        x = x + {factor}(sigmas[n + 1] - sigmas[n]) * (x - model(x, sigmas[n])) / sigmas[n]
    return x
'''


def files(results: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


def recorded(monkeypatch, capsys, results: Path, *options) -> Path:
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "--results-dir", results, *options)
    assert code == 0, err
    return results


def test_ctrl_c_exits_130_with_the_resume_message(tmp_path):
    """SIGINT in the middle of a real run: exit 130 (so `gasbench run && gasbench table` stops)
    and the message; the same command then completes."""
    plugin = tmp_path / "slow_teacher.py"
    plugin.write_text(SLOW_TEACHER)
    started = tmp_path / "started"
    env = {**os.environ, "GASBENCH_HOME": str(tmp_path / "home"), "GASBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gasbench", "run", "--plugin", plugin, "-d", "slow-gmm", "-m", "euler",
               "--nfe", "4", "-n", "16", "--metrics", "rmse", "--results-dir", tmp_path / "results"]
    # a Ctrl-C reaches a process whose SIGINT is the default, whatever the test runner's is
    process = subprocess.Popen(command, env={**env, "STARTED": str(started)}, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), process.communicate(timeout=60)[1][-3000:]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted; completed cells are recorded, rerun the same command to resume" in " ".join(err.split())
    assert "Traceback" not in err
    assert not list((tmp_path / "results").rglob("metrics.json"))
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "results" / "slow-gmm" / "euler" / "nfe4" / "metrics.json").is_file()


def test_a_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch, capsys):
    """A plugin registering `dpmpp2m` is refused with one message naming both definitions, and the
    built-in's records are left as they were."""
    results = recorded(monkeypatch, capsys, tmp_path / "results", "-m", "dpmpp2m,euler", "--seeds", "2")
    before = files(results)
    shadow = tmp_path / "shadow.py"
    shadow.write_text(PLUGIN.format(name="dpmpp2m", factor=""))
    builtin = SOLVERS.get("dpmpp2m")
    for command in ([*RUN, "-m", "dpmpp2m", "--results-dir", results], ["list", "solvers"]):
        code, _, err = gasbench(monkeypatch, capsys, *command, "--plugin", shadow)
        message = " ".join(err.split())
        assert code == 2, err
        assert "solver name 'dpmpp2m' is already registered by 'dpmpp2m'" in message
        assert "handcrafted.py" in message and str(shadow) in message and "under another name" in message
        assert "Traceback" not in err
    assert SOLVERS.get("dpmpp2m") is builtin
    assert files(results) == before


def test_an_edited_plugin_stops_the_run_until_overwrite(tmp_path, monkeypatch, capsys, request):
    """The record holds the sha256 of the solver's code: after the plugin's formula changes, a
    rerun stops before any work, asking for --overwrite, which then recomputes the cell."""
    request.addfinalizer(lambda: SOLVERS.unregister("test-edited"))
    plugin = tmp_path / "edited.py"
    plugin.write_text(PLUGIN.format(name="test-edited", factor=""))
    results = recorded(monkeypatch, capsys, tmp_path / "results", "-m", "test-edited", "--plugin", plugin)
    record = results / "gmm" / "test-edited" / "nfe4" / "metrics.json"
    first = json.loads(record.read_text())
    assert recorded(monkeypatch, capsys, results, "-m", "test-edited", "--plugin", plugin) and \
        json.loads(record.read_text()) == first  # unchanged code: the record is reused
    before = files(results)
    plugin.write_text(PLUGIN.format(name="test-edited", factor="0.9 * "))
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "test-edited", "--plugin", plugin, "--results-dir", results)
    message = " ".join(err.split())
    assert code == 2, err
    assert f"{record.parent} already holds a record made with other solver code (sha256 " \
           f"{first['solver']['code_sha256']}, now " in message
    assert "--overwrite" in message and "--results-dir" in message
    assert files(results) == before
    recorded(monkeypatch, capsys, results, "-m", "test-edited", "--plugin", plugin, "--overwrite")
    second = json.loads(record.read_text())
    assert second["identity"]["solver_code"] == second["solver"]["code_sha256"] != first["solver"]["code_sha256"]
    assert second["metrics"]["rmse"] != first["metrics"]["rmse"]


def test_run_stops_at_a_corrupt_record_and_leaves_it(tmp_path, monkeypatch, capsys):
    """A damaged metrics.json stops `run` as it stops `table`, and stays byte for byte until the
    user says --overwrite."""
    results = recorded(monkeypatch, capsys, tmp_path / "results", "-m", "euler")
    record = results / "gmm" / "euler" / "nfe4" / "metrics.json"
    record.write_bytes(record.read_bytes()[:100])
    before = files(results)
    for command, advice in (([*RUN, "-m", "euler", "--results-dir", results], "pass --overwrite to recompute"),
                            (["table", "--results-dir", results], "delete it and rerun")):
        code, _, err = gasbench(monkeypatch, capsys, *command)
        message = " ".join(err.split())
        assert code == 2, err
        assert f"{record} is not a readable record" in message and advice in message
        assert files(results) == before
    recorded(monkeypatch, capsys, results, "-m", "euler", "--overwrite")
    assert json.loads(record.read_text())["metrics"]["rmse"] > 0


def test_a_record_without_solver_code_stops_the_run_and_still_tabulates(tmp_path, monkeypatch, capsys):
    """A record written before gasbench recorded solver code: `run` cannot tell whether the code
    changed since, so it stops and leaves it; `table` shows it."""
    results = recorded(monkeypatch, capsys, tmp_path / "results", "-m", "euler")
    record = results / "gmm" / "euler" / "nfe4" / "metrics.json"
    old = json.loads(record.read_text())
    del old["identity"]["solver_code"], old["solver"]["code_sha256"]
    record.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    before = files(results)
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "euler", "--results-dir", results)
    assert code == 2, err
    assert "written before gasbench recorded the sha256 of a solver's code" in " ".join(err.split())
    assert files(results) == before
    code, out, err = gasbench(monkeypatch, capsys, "table", "--results-dir", results)
    assert code == 0 and "| euler" in out, err


def test_solver_code_covers_the_modules_a_solver_runs_on():
    """The code sha256 covers a solver's own module, its bases' and the gasbench.solvers modules
    they import (a handcrafted loop runs on the executor and the schedules), no others."""
    from gasbench.solvers.base import _code_sources
    from gasbench.solvers.release import release_time

    solvers = "gasbench.solvers."
    handcrafted = {solvers + m for m in ("handcrafted", "base", "executor", "schedules")}
    assert set(_code_sources(SOLVERS.get("euler"))) == handcrafted
    assert set(_code_sources(SOLVERS.get("gs"))) == handcrafted | {solvers + m for m in ("gs", "learned", "fit")}
    # the release's students sample with the GS code and their own loop and times (release_time);
    # the file reader (gasbench.teachers.release) decides nothing about the samples
    release = set(_code_sources(SOLVERS.get("gas-release")))
    assert release == set(_code_sources(SOLVERS.get("gs"))) | {release_time.__module__}
    assert SOLVERS.get("euler").code_sha256() == SOLVERS.get("unipc").code_sha256() != SOLVERS.get("gs").code_sha256()
