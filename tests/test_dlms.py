"""DLMS: its adaptive table on the shared executor, its PLMS initialisation, Algorithm 1, and its saved state."""

from __future__ import annotations

import time

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.dlms import dpmpp2m_interval
from gasbench.solvers.executor import AdaptiveTable, ExecutionStats, execute, trace
from gasbench.solvers.handcrafted import dpmpp_2m

FAST = {"iterations": 30, "batch_size": 12, "lr": 1e-2}
# Adams-Bashforth weights on the newest-first history, written out here independently of gasbench
AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def plms_data_prediction(teacher, x, nfe, order, afs):
    """PLMS on data predictions on the time-uniform schedule (Eq. 8-9 with Adams-Bashforth
    weights, warm-up orders); with AFS the first output is D = 0, without an evaluation."""
    steps = nfe + int(afs)
    t = torch.linspace(teacher.time.t(teacher.sigma_max), teacher.time.t(teacher.sigma_min), steps + 1, dtype=torch.float64)
    sigmas = teacher.time.sigma(t)
    outputs = []
    for n in range(steps):
        ratio = sigmas[n + 1] / sigmas[n]
        outputs.append(torch.zeros_like(x) if afs and n == 0 else teacher.denoise(x, sigmas[n], None))
        weights = AB[min(order, len(outputs))]
        prediction = sum(w * d for w, d in zip(weights, reversed(outputs)))
        x = ratio * x + (1 - ratio) * prediction
    return x


def noise(teacher, count, seed=0):
    return torch.randn(count, *teacher.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randomised(solver, teacher, nfe, seed=1):
    """Initial parameters with a random last layer, so every sample gets its own rows."""
    params = solver.parameters_for(teacher, nfe)
    params["w2"] = 0.3 * torch.randn(params["w2"].shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return params


@pytest.mark.parametrize("afs", [True, False])
@pytest.mark.parametrize("nfe,order", [(2, 4), (4, 4), (6, 3), (5, 1)])
def test_initial_dlms_is_plms_on_the_time_uniform_schedule(gmm_teacher, nfe, order, afs):
    table = SOLVERS.get("dlms")(order=order, afs=afs).table(gmm_teacher, nfe)
    x_T = noise(gmm_teacher, 16) * gmm_teacher.sigma_max
    stats = ExecutionStats()
    ours = execute(table, gmm_teacher.denoiser(None), x_T, stats=stats)
    torch.testing.assert_close(ours, plms_data_prediction(gmm_teacher, x_T, nfe, order, afs), rtol=0, atol=1e-10)
    assert stats.nfe == table.nfe == nfe and table.points == nfe + afs


@pytest.mark.parametrize("designer", ["embeddings", "mlp"])
def test_coefficients_sum_to_one_and_steps_differ_per_sample(gmm_teacher, designer):
    """Either designer: Eq. 8's weights sum to one, every next-time portion lies in (0, 1), the
    per-sample schedules differ and all end at sigma_min."""
    solver = SOLVERS.get("dlms")(designer=designer)
    table = solver.table_from(randomised(solver, gmm_teacher, 5), gmm_teacher, 5)
    rows = []
    execute(table, gmm_teacher.denoiser(None), noise(gmm_teacher, 32) * gmm_teacher.sigma_max, callback=rows.append)
    sigma = torch.full((32,), gmm_teacher.sigma_max, dtype=torch.float64)
    for row in rows:
        n, ratio = row["i"], row["a"][row["i"]]
        assert all(isinstance(w, float) and w == 0 for w in row["a"][:n])  # Eq. 9: only x_{n-1}
        weights = [w for w in row["c"] if isinstance(w, torch.Tensor)]
        if weights:
            torch.testing.assert_close(sum(weights) / (1 - ratio), torch.ones(32, dtype=torch.float64), rtol=0, atol=1e-12)
        assert bool(((ratio > 0) & (ratio < 1)).all())
        sigma = sigma * ratio
    evaluation = torch.stack([row["sigma"] for row in rows[2:]])  # after the AFS point and the first, shared, step
    assert bool((evaluation.std(dim=1) > 1e-3).all())
    torch.testing.assert_close(sigma, torch.full_like(sigma, gmm_teacher.sigma_min), rtol=1e-9, atol=0)


def test_executor_runs_per_sample_tables_counts_and_times_them(gmm_teacher):
    grid = torch.exp(torch.linspace(torch.log(torch.tensor(80.0)), torch.log(torch.tensor(0.002)), 6, dtype=torch.float64))
    static = trace(dpmpp_2m, grid, lower_order_final=False)
    x_T = noise(gmm_teacher, 4) * 80.0
    per_sample = dpmpp2m_interval(grid[:1].expand(4), grid[-1:].expand(4), steps=4)  # log-uniform: the same grid
    calls = []

    def slow(x, sigma):
        calls.append(sigma)
        time.sleep(0.01)
        return gmm_teacher.denoise(x, sigma, None)

    stats = ExecutionStats()
    out = execute(per_sample, slow, x_T, stats=stats)
    torch.testing.assert_close(out, execute(static, gmm_teacher.denoiser(None), x_T), rtol=1e-12, atol=1e-12)
    assert stats.nfe == len(calls) == 5 and all(s.shape == (4,) for s in calls)
    assert stats.denoiser_seconds >= 0.05 and 0 <= stats.solver_seconds < stats.denoiser_seconds

    class Declares(AdaptiveTable):  # an adaptive table that says 2 evaluations and makes 5
        nfe, points, sigma_final = 2, 5, 0.002

        def start(self, x):
            return per_sample

    with pytest.raises(ValueError, match="declared 2 evaluations but made 5"):
        execute(Declares(), gmm_teacher.denoiser(None), x_T)


def test_analytical_first_step_is_free_and_feature_denoisers_are_required(gmm_teacher):
    table = SOLVERS.get("dlms")(afs=True).table(gmm_teacher, 3)
    x_T = noise(gmm_teacher, 4) * gmm_teacher.sigma_max
    stats = ExecutionStats()
    execute(table, gmm_teacher.denoiser(None), x_T, stats=stats)
    assert stats.nfe == 3 and table.points == 4
    with pytest.raises(TypeError, match="with_features"):
        execute(table, lambda x, sigma: gmm_teacher.denoise(x, sigma, None), x_T)


def test_training_forward_is_the_sampling_solve(gmm, gmm_pairs):
    """Algorithm 1's student states (stop-gradients change no value) are Algorithm 2's."""
    for afs in (True, False):
        solver = SOLVERS.get("dlms")(afs=afs, interpolation_steps=1)
        params = randomised(solver, gmm, 4)
        batch = {k: v[:8] for k, v in gmm_pairs[0].items()}
        losses = list(solver.distillation_steps(params, gmm, 4, batch))
        assert len(losses) == 4 + afs - 1
        sampled = execute(solver.table_from(params, gmm, 4), gmm.denoiser(None), batch["noise"].double() * gmm.sigma_max)
        torch.testing.assert_close(losses[-1][1].detach(), sampled, rtol=0, atol=1e-10)


def test_fit_lowers_validation_loss_and_reloads_bit_identically(gmm, gmm_pairs, tmp_path):
    solver = SOLVERS.get("dlms")(**FAST)
    result = solver.fit(gmm, 4, *gmm_pairs, progress=False)
    assert result.final_validation_loss < 0.9 * result.initial_validation_loss
    assert result.loss == "l2" and result.iterations == FAST["iterations"]
    table = solver.table(gmm, 4)
    seeds = list(range(50_000, 50_016))
    samples = sample_seeds(gmm, table, seeds, 16)
    steps = solver.steps(solver.params, gmm, 4, samples=16)
    assert steps["evaluation sigma std"][1:].max() > 0  # trained steps differ per sample
    solver.save_state(tmp_path, gmm, 4)
    again = SOLVERS.get("dlms")(**FAST)
    assert again.load_state(tmp_path, gmm, 4)
    assert torch.equal(sample_seeds(gmm, again.table(gmm, 4), seeds, 16), samples)
    assert not SOLVERS.get("dlms")(**{**FAST, "order": 3}).load_state(tmp_path, gmm, 4)


def test_resumed_fit_equals_uninterrupted_fit(resumed_fit):
    resumed_fit("dlms", {k: v for k, v in FAST.items() if k != "iterations"}, first=3, total=6)


def test_network_teachers_give_their_bottleneck_from_the_same_pass():
    from gasbench.core.registry import TEACHERS

    digits = TEACHERS.get("digits")()
    x = noise(digits, 4) * 2.0
    sigma, cond = torch.tensor([0.5, 1.0, 2.0, 40.0], dtype=torch.float64), torch.arange(4)
    denoised, features = digits.denoise_with_features(x, sigma, cond)
    assert torch.equal(denoised, digits.denoise(x, sigma, cond)) and features.shape == (4, digits.feature_dim)
    assert digits.feature_dim == 64 and bool(torch.isfinite(features).all())


def test_bad_options_and_an_untrainable_nfe_are_refused(gmm, gmm_pairs):
    for options, match in (({"order": 5}, "order"), ({"interpolation_steps": -1}, "interpolation_steps"),
                           ({"hidden": 0}, "hidden"), ({"checkpointing": True}, "no option"),
                           ({"designer": "transformer"}, "designer"), ({"time_scale": "tanh"}, "time_scale"),
                           ({"scale_bound": 1.0}, "scale_bound"), ({"scale_bound": -0.1}, "scale_bound"),
                           ({"scale_bound": "nan"}, "scale_bound")):
        with pytest.raises(GasbenchError, match=match):
            SOLVERS.get("dlms")(**options)
    with pytest.raises(GasbenchError, match="nothing to learn at NFE 1"):
        SOLVERS.get("dlms")(**{**FAST, "afs": False}).fit(gmm, 1, *gmm_pairs, progress=False)


def test_gasbench_run_show_and_overhead_accept_an_adaptive_table(tmp_path, gmm, monkeypatch, capsys):
    from helpers import gasbench

    from gasbench.overhead import measure_overhead
    from gasbench.runner import RunConfig, run

    config = RunConfig(teacher="gmm", methods=["dlms"], nfes=[3], num_samples=16, results_dir=tmp_path,
                       solver_args={"iterations": "4", "train_size": "24", "interpolation_steps": "1"})
    (record,) = run(config)
    assert record["nfe_measured"] == 3 and record["training"]["iterations"] == 4
    code, out, _ = gasbench(monkeypatch, capsys, "show", tmp_path / "gmm" / record["method"] / "nfe3")
    assert code == 0 and "dlms for teacher 'gmm' at NFE 3" in out and "evaluation sigma" in out and "per sample" in out
    (row,) = measure_overhead(gmm, ["dlms"], [3], batch_size=8, repeats=1)
    assert row["nfe"] == 3 and row["denoiser_ms"] > 0


def test_designer_has_the_papers_size_on_a_64_channel_bottleneck():
    """Sec. 4.1: a designer of "only 9k" parameters (AMED-Plugin's layers at its 128 units on a
    64-value bottleneck); the CPU default, one hidden layer of 32 units, has 2.5k."""
    from gasbench.core.registry import TEACHERS

    digits = TEACHERS.get("digits")()
    count = lambda solver, nfe: sum(p.numel() for p in solver.parameters_for(digits, nfe).values())  # noqa: E731
    for nfe in (4, 10):
        assert 8_500 <= count(SOLVERS.get("dlms")(designer="embeddings", hidden=128), nfe) <= 9_500
        assert 2_300 <= count(SOLVERS.get("dlms")(), nfe) <= 2_800  # the CPU default: mlp at 32 units


@pytest.mark.parametrize("bound", [None, 0.0, 0.2, 0.5])
def test_time_scales_stay_inside_their_bound(gmm_teacher, bound):
    """``time_scale = "bounded"``: AMED-Plugin's 1 - b + 2b sigmoid(.) lies in [1 - b, 1 + b] and
    spans it, b = 0 switches time scaling off; ``exp`` is unbounded; 1 at initialisation either way."""
    options = {"time_scale": "exp"} if bound is None else {"time_scale": "bounded", "scale_bound": bound}
    solver = SOLVERS.get("dlms")(**options)
    designer = solver.designer(solver.parameters_for(gmm_teacher, 4), gmm_teacher, 4)
    scale = designer.scale(torch.linspace(-40, 40, 81, dtype=torch.float64))
    assert float(scale[40]) == 1.0
    if bound is None:
        assert float(scale.max()) > 1e10 and float(scale.min()) < 1e-10
    else:
        assert float(scale.min()) >= 1 - bound - 1e-12 and float(scale.max()) <= 1 + bound + 1e-12  # rounding
        torch.testing.assert_close(scale[[0, -1]], torch.tensor([1 - bound, 1 + bound], dtype=torch.float64), rtol=0, atol=1e-12)


def test_paper_budget_follows_appendix_b_per_teacher():
    """Appendix B: p, M and trajectories per teacher; Sec. 4.1: Adam 5e-3, the 9k designer, time-
    uniform PLMS start; every override is an option of the solver with a valid value."""
    from types import SimpleNamespace

    dlms = SOLVERS.get("dlms")
    expected = {"cifar10": ("pixel", 4, 4, 20_000), "ffhq": ("pixel", 4, 4, 20_000),
                "lsun-bedroom": ("latent", 3, 1, 10_000), "imagenet256": ("latent", 3, 3, 5_000),
                "sd15": ("text", 2, 1, 5_000)}
    for name, (modality, order, steps, trajectories) in expected.items():
        budget = dlms.paper_budget(SimpleNamespace(name=name, modality=modality))
        solver = dlms(**budget)
        assert (budget["order"], budget["interpolation_steps"], budget["train_size"]) == (order, steps, trajectories)
        assert budget["iterations"] * budget["batch_size"] <= trajectories < (budget["iterations"] + 1) * budget["batch_size"]
        assert budget["lr"] == 5e-3 and budget["schedule"] == "time-uniform"
        assert (budget["designer"], budget["hidden"]) == ("embeddings", 128)
        assert budget["loss"] == ("lpips-vgg" if modality == "pixel" else "l2")  # the final step's distance
        # Sec. 3.3's EMA half-life in images (2 kimg): the decay per batch, compounded over 2,000 images, halves
        assert solver.config["ema"] ** (2000 / budget["batch_size"]) == pytest.approx(0.5, rel=1e-12)
    assert dlms.paper_budget(SimpleNamespace(name="cifar10", modality="pixel"))["batch_size"] == 128
    # a teacher outside the paper gets its modality's settings
    assert dlms.paper_budget(SimpleNamespace(name="my-ldm", modality="latent"))["order"] == 3
