"""Which schedule a handcrafted solver runs on: its own paper's by default (by teacher), an explicit
one when asked, or the best on validation trajectories with ``--schedule tuned``; tables show it."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from gasbench import tuning
from gasbench.cli import main
from gasbench.metrics import Evaluation, get_metric
from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.report import build_report
from gasbench.sampling import sample_seeds
from gasbench.solvers.schedules import make_sigmas
from gasbench.tables import render
from gasbench.teachers.ldm import LatentDiffusionTeacher
from gasbench.teachers.text_to_image import TextToImageTeacher
from gasbench.core.seeds import SPLIT_ENDS, SPLIT_STARTS
from gasbench.trajectories import TrajectoryCache
from helpers import gasbench


def teacher_like(modality: str, side: int, guidance: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(modality=modality, shape=(3, side, side), guidance_scale=guidance, default_schedule="logsnr")


# rows: the built-in 8x8 teachers, CIFAR-10 (32), FFHQ / AFHQv2 (64), a 256 pixel DDPM, a guided
# pixel model, the LDM latents (3x64x64) and Stable Diffusion's
TEACHERS_LIKE = {"gmm": None, "digits": None, "pixel32": teacher_like("pixel", 32),
                 "pixel64": teacher_like("pixel", 64), "pixel256": teacher_like("pixel", 256), "guided32": teacher_like("pixel", 32, guidance=2.0),
                 "latent64": teacher_like(LatentDiffusionTeacher.modality, 64),
                 "text64": teacher_like(TextToImageTeacher.modality, 64, guidance=7.5)}
PAPER = {  # solver -> schedule per TEACHERS_LIKE column, from each paper (solvers/schedules.py)
    "euler": ["time-quadratic"] * 3 + ["time-uniform"] * 5,  # DDIM App. D.2: quadratic on CIFAR-10 only
    "heun": ["edm"] * 8,  # EDM Eq. 5 everywhere
    "dpmpp2m": ["logsnr"] * 4 + ["time-uniform"] * 4,  # DPM-Solver: logSNR at low resolution
    "dpmpp3m": ["logsnr"] * 4 + ["time-uniform"] * 4,
    "unipc": ["logsnr"] * 4 + ["time-uniform"] * 4,  # GAS Table 17's UniPC teachers alike
    "unipc-bh2": ["logsnr"] * 4 + ["time-uniform"] * 4,
    "ipndm": ["time-quadratic"] * 4 + ["time-uniform"] * 4,  # DEIS; DLMS Sec. 4.4
}


@pytest.fixture(scope="module")
def teachers():
    return {name: TEACHERS.get(name)() if like is None else like for name, like in TEACHERS_LIKE.items()}


@pytest.mark.parametrize("solver", sorted(PAPER))
def test_each_handcrafted_solver_defaults_to_its_papers_schedule_for_the_teacher(solver, teachers):
    assert LatentDiffusionTeacher.modality == "latent" and TextToImageTeacher.modality == "text"
    found = [SOLVERS.get(solver)().resolved_config(t)["schedule"] for t in teachers.values()]
    assert found == PAPER[solver]


def test_the_table_is_built_on_the_default_schedule(teachers):
    gmm = teachers["gmm"]
    for solver, schedule in (("euler", "time-quadratic"), ("dpmpp3m", "logsnr")):
        table = SOLVERS.get(solver)().table(gmm, 5)
        assert torch.allclose(table.sigmas.double(), make_sigmas(schedule, 5, gmm)[:-1])


def test_learned_solvers_keep_their_own_defaults(teachers):
    for name in ("gs", "gas", "s4s", "ld3", "dlms"):
        cls = SOLVERS.get(name)
        schedules = {cls().resolved_config(t)["schedule"] for t in teachers.values()}
        own = cls.options["schedule"]
        assert schedules == {own if own is not None else "logsnr"}, name  # not the handcrafted papers' rule


def test_an_explicit_schedule_wins(teachers):
    for name in PAPER:
        for t in teachers.values():
            assert SOLVERS.get(name)(schedule="gits").resolved_config(t)["schedule"] == "gits"


RUN = ("run", "-d", "gmm", "--nfe", "3,4", "-n", "16", "--metrics", "rmse,fd")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One `gasbench run --schedule tuned` on the analytic teacher, the seeds its tuning sampled, and
    the same methods on their paper schedules and on --schedule logsnr."""
    results = tmp_path_factory.mktemp("tuned") / "results"
    sampled, original = [], tuning.sample_seeds
    patch = pytest.MonkeyPatch()
    patch.setattr(tuning, "sample_seeds", lambda teacher, table, seeds, *a, **k: sampled.extend(seeds) or original(
        teacher, table, seeds, *a, **k))
    argv = sys.argv
    try:
        for extra in (["--schedule", "tuned"], [], ["--solver-arg", "schedule=logsnr"]):
            sys.argv = ["gasbench", *RUN, "-m", "dpmpp3m,euler", "--results-dir", str(results), *extra]
            main()
    finally:
        sys.argv = argv
        patch.undo()
    return results, sampled


def record(results, label, nfe):
    return json.loads((results / "gmm" / label / f"nfe{nfe}" / "metrics.json").read_text())


def test_tuned_records_the_argmin_of_its_validation_scores(tuned, gmm):
    results, _ = tuned
    for label in ("dpmpp3m+schedule=tuned", "euler+schedule=tuned"):
        for nfe in (3, 4):
            r = record(results, label, nfe)
            scores = r["schedule_tuning"]["scores"]
            assert r["solver"]["schedule"] == r["schedule_tuning"]["chosen"] == min(scores, key=scores.get)
            assert r["schedule_tuning"]["metric"] == "rmse" and r["schedule_tuning"]["split"] == "validation"
            # gits has lists for 4-8 steps only: skipped at 3 steps, scored at 4
            assert ("gits" in scores) == (nfe >= 4) and {"logsnr", "time-uniform", "edm"} <= set(scores)
    # the recorded score is the chosen solver's RMSE against the teacher's validation solutions
    r = record(results, "dpmpp3m+schedule=tuned", 4)
    cache = TrajectoryCache.for_split(gmm, "validation")
    solved = cache.load()
    table = SOLVERS.get("dpmpp3m")(schedule=r["solver"]["schedule"]).table(gmm, 4)
    again = get_metric("rmse").compute(Evaluation(sample_seeds(gmm, table, list(cache.seeds), 256), solved["x0"], gmm))
    assert again == pytest.approx(r["schedule_tuning"]["scores"][r["solver"]["schedule"]], rel=1e-9)


def test_tuning_samples_validation_seeds_only(tuned):
    results, sampled = tuned
    r = record(results, "euler+schedule=tuned", 3)
    first, last = r["schedule_tuning"]["seeds"]
    assert (first, last) == (SPLIT_STARTS["validation"], SPLIT_STARTS["validation"] + r["schedule_tuning"]["size"] - 1)
    assert sampled and min(sampled) >= SPLIT_STARTS["validation"] and max(sampled) < SPLIT_ENDS["validation"]
    evaluation = range(r["seeds"][0][0], r["seeds"][0][1] + 1)
    assert not set(evaluation) & set(sampled)


def test_labels_keep_tuned_paper_and_explicit_cells_apart(tuned):
    results, _ = tuned
    paper, logsnr = record(results, "euler", 4), record(results, "euler+schedule=logsnr", 4)
    assert paper["solver"]["schedule"] == "time-quadratic" and "schedule_tuning" not in paper
    assert logsnr["solver"]["schedule"] == "logsnr"
    assert record(results, "euler+schedule=tuned", 4)["method"] == "euler+schedule=tuned"


def test_a_rerun_of_tuned_reuses_its_records(tuned, monkeypatch, capsys):
    results, _ = tuned
    path = results / "gmm" / "dpmpp3m+schedule=tuned" / "nfe4" / "metrics.json"
    before = path.read_bytes()
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "dpmpp3m", "--schedule", "tuned", "--results-dir", results)
    assert code == 0, err
    assert path.read_bytes() == before


def test_tuned_refuses_a_learned_method_before_any_work(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, *RUN, "-m", "euler,gs", "--schedule", "tuned", "--results-dir", tmp_path)
    assert code == 2 and "'gs' is a learned solver" in err and "--schedule tuned" in err
    assert not list(tmp_path.glob("**/metrics.json"))


def _markdown_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                               for line in text.splitlines() if line.startswith("| "))}


def test_tables_show_each_rows_schedule(tuned):
    results, _ = tuned
    rows = _markdown_rows(render(results, ["fd"]))
    assert rows["Method"][-1] == "schedule"
    assert rows["euler"][-1] == "time-quadratic" and rows["dpmpp3m"][-1] == "logsnr"
    assert rows["euler+schedule=logsnr"][-1] == "logsnr" and rows["Teacher (unipc NFE 50)"][-1] == "logsnr"
    chosen = [record(results, "dpmpp3m+schedule=tuned", n)["solver"]["schedule"] for n in (3, 4)]
    expected = chosen[0] if chosen[0] == chosen[1] else f"NFE 3: {chosen[0]}, NFE 4: {chosen[1]}"
    assert rows["dpmpp3m+schedule=tuned"][-1] == expected
    csv = render(results, ["fd"], fmt="csv").splitlines()
    assert "schedule" in csv[0].split(",") and any(line.startswith("euler,") and ",time-quadratic," in line for line in csv)
    assert "& time-quadratic \\\\" in render(results, ["fd"], fmt="latex")
    assert ">time-quadratic</td>" in build_report(results)
