"""`gasbench run --config FILE.yaml`: options from YAML, the command line winning, per-method
options, the shipped papers' configurations, and one clear message for a bad file."""

import json

import pytest

from gasbench.budgets import budget_options
from gasbench.config import PACKAGED, read_config

from helpers import gasbench


def write(path, text):
    path.write_text(text)
    return path


def test_options_come_from_the_file_and_the_command_line_wins(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "run.yaml", f"""
dataset: gmm
methods:
  euler: {{}}
  ipndm: {{order: 2}}
nfe: [3, 5]
num-samples: 16
metrics: [rmse]
results_dir: {tmp_path / 'from-file'}
""")
    code, _, err = gasbench(monkeypatch, capsys, "run", "--config", config, "--nfe", "4")
    assert code == 0, err
    cells = sorted(p.parent.relative_to(tmp_path / "from-file").as_posix() for p in (tmp_path / "from-file").rglob("metrics.json"))
    assert cells == ["gmm/euler/nfe4", "gmm/ipndm+order=2/nfe4"]  # --nfe 4 replaced the file's [3, 5]
    record = json.loads((tmp_path / "from-file/gmm/ipndm+order=2/nfe4/metrics.json").read_text())
    assert record["num_samples"] == 16 and record["solver"]["order"] == 2
    assert record["run_config"]["method_options"] == {"euler": {}, "ipndm": {"order": 2}}
    assert record["run_config"]["nfes"] == [4] and record["run_config"]["config_file"]["path"] == str(config)
    assert len(record["run_config"]["config_file"]["sha256"]) == 64


def test_default_valued_options_do_not_rename_a_method(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "run.yaml", "dataset: gmm\nmethods: {ipndm: {order: 4}, unipc: {order: 2}}\nnfe: 4\nnum_samples: 8\nmetrics: rmse\n")
    code, _, err = gasbench(monkeypatch, capsys, "run", "--config", config, "--results-dir", tmp_path / "r")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "r" / "gmm").iterdir() if p.is_dir()) == ["ipndm", "unipc+order=2"]


BAD = [
    ("dataset: gmm\nmethod: [euler]\n", "unknown option 'method'. Did you mean 'methods'?"),
    ("dataset: gmm\nnfe: [4\n", "is not valid YAML at line"),
    ("- euler\n- heun\n", "must be a mapping of `gasbench run` options"),
    ("dataset: gmm\nmethods: {ipndm: {ordr: 2}}\nnum_samples: 4\n", "ordr"),
    ("dataset: gmm\nmethods: {ipndm: 3}\n", "the options of method 'ipndm' must be a mapping"),
    ("dataset: gmm\nseed: fifty\nmethods: [euler]\n", "wrong type"),
    ("dataset: gmm\nnfe: four\nmethods: [euler]\n", "--nfe must be integers"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_a_bad_config_is_one_clear_message(text, message, tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "bad.yaml", text)
    code, out, err = gasbench(monkeypatch, capsys, "run", "--config", config, "--results-dir", tmp_path / "r")
    assert code != 0 and message in " ".join(err.split()) and "Traceback" not in out + err
    assert not (tmp_path / "r").exists()


def test_a_missing_config_file(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "run", "--config", tmp_path / "absent.yaml")
    assert code != 0 and "cannot read it" in err and "Traceback" not in err


PAPER_CONFIGS = sorted(p.relative_to(PACKAGED).as_posix() for p in PACKAGED.rglob("*.yaml"))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_shipped_paper_config_names_valid_methods_and_options(name):
    from gasbench.cli import _run_config
    from gasbench.core.registry import METRICS, SOLVERS, TEACHERS

    values = dict(methods=None, dataset="digits", nfe=["4"], seed=50_000, num_samples=None, batch_size="256",
                  results_dir="results", schedule=None, solver_args=None, metrics=None, seeds=1, overwrite=False,
                  weights=None, device="auto", precision="fp32", reference_images=None)
    values.update(read_config(name))  # found by its relative name, as users type it
    config = _run_config(values, name)
    assert config.budget == "paper"  # every method under its own paper's settings
    teacher = TEACHERS.get(config.teacher)  # the class states what the paper budgets depend on
    for metric in config.metrics:
        METRICS.resolve(metric)
    for method in config.methods:
        cls = SOLVERS.get(method)
        budget = budget_options(cls, config.budget, teacher, 4) if cls.learned else {}
        cls(**{**budget, **config.method_options.get(method, {})})  # refuses unknown or ill-typed options


def test_paper_configs_cover_every_papers_teacher_for_gs_and_gas():
    teachers = {"cifar10", "ffhq", "afhqv2", "lsun-bedroom", "imagenet256", "sd15"}
    assert {f"paper/{t}_{m}.yaml" for t in teachers for m in ("gs", "gas", "baselines")} <= set(PAPER_CONFIGS)
