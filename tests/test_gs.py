"""The Generalized Solver: its initialisation is DPM-Solver++(3M), it learns, and it reloads."""

from __future__ import annotations

import pytest
import torch

from gasbench.errors import GasbenchError
from gasbench.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.gs import stick_breaking_times
from gasbench.trajectories import TrajectoryCache

FAST = {"iterations": 60, "batch_size": 16, "lr": 1e-2, "ema": 0.9, "checkpointing": False}


@pytest.fixture(scope="module")
def gmm():
    from gasbench.registry import TEACHERS

    return TEACHERS.get("gmm")()


@pytest.fixture(scope="module")
def data(gmm, tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    train = TrajectoryCache.for_split(gmm, "train", size=96, root=root)
    validation = TrajectoryCache.for_split(gmm, "validation", size=48, root=root)
    for cache in (train, validation):
        cache.generate()
    keep = ("noise", "x0")
    return ({k: v for k, v in train.load().items() if k in keep},
            {k: v for k, v in validation.load().items() if k in keep})


@pytest.mark.parametrize("nfe", [3, 4, 7])
def test_untrained_gs_is_dpmpp3m_on_the_same_steps(gmm, nfe):
    gs = SOLVERS.get("gs")().table(gmm, nfe)
    base = SOLVERS.get("dpmpp3m")(schedule="time-uniform").table(gmm, nfe)
    for ours, theirs in ((gs.a, base.a), (gs.c, base.c), (gs.sigmas, base.sigmas)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    seeds = list(range(20))
    assert torch.equal(sample_seeds(gmm, gs, seeds, 20), sample_seeds(gmm, base, seeds, 20))


def test_stick_breaking_times_decrease_between_the_endpoints():
    theta = torch.tensor([3.0, -2.0, 0.0, 5.0], dtype=torch.float64)
    t = stick_breaking_times(theta, 1.0, 1e-3)
    assert t[0] == 1.0 and t[-1] == 1e-3 and bool((t[1:] < t[:-1]).all())


def test_fit_lowers_validation_loss_and_reloads_to_identical_samples(gmm, data, tmp_path):
    solver = SOLVERS.get("gs")(**FAST)
    summary = solver.fit(gmm, 4, *data, progress=False)
    assert summary["final_validation_loss"] < 0.9 * summary["initial_validation_loss"]
    table = solver.table(gmm, 4)
    assert bool((table.sigmas[1:] < table.sigmas[:-1]).all())
    solver.save_state(tmp_path, gmm, 4)
    again = SOLVERS.get("gs")(**FAST)
    assert again.load_state(tmp_path, gmm, 4)
    seeds = list(range(50_000, 50_016))
    assert torch.equal(sample_seeds(gmm, again.table(gmm, 4), seeds, 16), sample_seeds(gmm, table, seeds, 16))
    assert not SOLVERS.get("gs")(**{**FAST, "lr": 0.5}).load_state(tmp_path, gmm, 4)  # other config
    assert not SOLVERS.get("gs")(**FAST).load_state(tmp_path, gmm, 5)  # other NFE


def test_resumed_fit_equals_uninterrupted_fit(gmm, data, tmp_path):
    config = {**FAST, "iterations": 200}
    whole = SOLVERS.get("gs")(**config)
    whole.fit(gmm, 3, *data, progress=False)
    first = SOLVERS.get("gs")(**{**config, "iterations": 100})
    # a fit stopped at its 100-iteration checkpoint, then resumed with a larger budget
    first.fit(gmm, 3, *data, progress=False, checkpoint_path=tmp_path / "ckpt.pt")
    resumed = SOLVERS.get("gs")(**config)
    resumed.fit(gmm, 3, *data, progress=False, checkpoint_path=tmp_path / "ckpt.pt")
    for key in whole.params:
        torch.testing.assert_close(resumed.params[key], whole.params[key], rtol=0, atol=0)


def test_nan_loss_stops_with_a_clear_message(gmm, data):
    bad_train = {k: v.clone() for k, v in data[0].items()}
    bad_train["x0"][:] = float("nan")
    with pytest.raises(GasbenchError, match="training loss became nan at iteration 1"):
        SOLVERS.get("gs")(**FAST).fit(gmm, 4, bad_train, data[1], progress=False)


def test_ablations_start_from_the_same_solver(gmm):
    plain = SOLVERS.get("gs")().table(gmm, 5)
    for options in ({"guidance": False}, {"decouple": False}):
        other = SOLVERS.get("gs")(**options).table(gmm, 5)
        torch.testing.assert_close(other.a, plain.a)
        torch.testing.assert_close(other.c, plain.c)


def test_gasbench_run_trains_records_and_reuses_gs(tmp_path):
    from gasbench.runner import RunConfig, run

    config = RunConfig(teacher="gmm", methods=["gs", "dpmpp3m"], nfes=[3], num_samples=32, results_dir=tmp_path,
                       solver_args={"iterations": "40", "train_size": "64", "lr": "1e-2", "checkpointing": "false"})
    records = {r["method"]: r for r in run(config)}
    label = "gs+checkpointing=false+iterations=40+lr=1e-2+train_size=64"
    gs = records[label]
    assert gs["solver"]["learned"] is True and gs["training"]["iterations"] == 40
    assert gs["training"]["final_validation_loss"] < gs["training"]["initial_validation_loss"]
    cell = tmp_path / "gmm" / label / "nfe3"
    assert (cell / "solver.safetensors").is_file() and (cell / "solver.json").is_file()
    assert not (cell / "fit-checkpoint.pt").exists()
    again = {r["method"]: r for r in run(config)}
    assert again[label]["created"] == gs["created"]
    (cell / "metrics.json").unlink()  # the record is gone but the trained state is reused
    rerun = {r["method"]: r for r in run(config)}
    assert rerun[label]["metrics"] == gs["metrics"] and rerun[label]["training"] == gs["training"]
