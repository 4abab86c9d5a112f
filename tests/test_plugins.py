"""External solver plugins: the README's worked example, by entry point and by --plugin path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dpmpp2s_plugin"


def run_cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "gasbench", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )


@pytest.fixture
def entry_point_dir(tmp_path):
    """A distribution's metadata declaring the example under the gasbench.solvers group,
    as `pip install ./examples/dpmpp2s_plugin` would write it."""
    dist = tmp_path / "gasbench_dpmpp2s-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gasbench-dpmpp2s\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[gasbench.solvers]\ndpmpp2s = gasbench_dpmpp2s\n")
    return tmp_path


def test_entry_point_plugin_is_listed_and_runs(entry_point_dir, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(entry_point_dir), str(EXAMPLE)])}
    listed = run_cli("list", "solvers", env_extra=env)
    assert listed.returncode == 0, listed.stderr
    assert "dpmpp2s" in listed.stdout and "DPM-Solver++(2S)" in listed.stdout
    ran = run_cli("run", "--dataset", "gmm", "--methods", "dpmpp2s", "--nfe", "4,8", "-n", "16",
                  "--results-dir", tmp_path / "r", env_extra=env)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "r" / "gmm" / "dpmpp2s" / "nfe8" / "metrics.json").is_file()


def test_plugin_by_path(tmp_path):
    plugin = EXAMPLE / "gasbench_dpmpp2s.py"
    listed = run_cli("list", "solvers", "--plugin", plugin)
    assert listed.returncode == 0 and "dpmpp2s" in listed.stdout
    ran = run_cli("run", "--plugin", plugin, "--dataset", "gmm", "--methods", "dpmpp2s,euler",
                  "--nfe", "6", "-n", "16", "--results-dir", tmp_path / "r")
    assert ran.returncode == 0, ran.stderr
    table = run_cli("table", "--results-dir", tmp_path / "r")
    assert "dpmpp2s" in table.stdout and "euler" in table.stdout


def test_plugin_is_second_order(gmm_teacher):
    """The example is a real solver: halving its step size divides the error by about 4."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from gasbench_dpmpp2s import dpmpp_2s
    finally:
        sys.path.remove(str(EXAMPLE))
    from gasbench.solvers.executor import execute, trace

    x_T = torch.randn(4, *gmm_teacher.shape, dtype=torch.float64) * 5
    grid = lambda n: torch.exp(torch.linspace(-1.609, 0.693, n + 1, dtype=torch.float64).neg())  # noqa: E731
    fine = execute(trace(dpmpp_2s, grid(512)), gmm_teacher.denoiser(None), x_T)
    errors = [(execute(trace(dpmpp_2s, grid(n)), gmm_teacher.denoiser(None), x_T) - fine).norm() for n in (16, 32)]
    assert 3.0 < errors[0] / errors[1] < 5.5


def test_broken_plugin_is_one_message(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = run_cli("list", "--plugin", broken)
    assert result.returncode == 2 and "failed to import: boom" in result.stderr
    assert "Traceback" not in result.stderr
