"""The Generalized Solver: its initialisation is DPM-Solver++(3M), it learns, and it reloads."""

from __future__ import annotations

import json

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.executor import LinComb, execute, trace
from gasbench.solvers.gs import derivative_basis, inverse_stick_breaking, stick_breaking_times
from gasbench.solvers.handcrafted import dpmpp_update
from helpers import release_updates

FAST = {"iterations": 60, "batch_size": 16, "lr": 1e-2}


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("nfe", [1, 3, 4, 7])
def test_untrained_gs_is_dpmpp3m_on_the_same_steps(gmm, nfe, lower_order_final):
    gs = SOLVERS.get("gs")(lower_order_final=lower_order_final).table(gmm, nfe)
    base = SOLVERS.get("dpmpp3m")(schedule="time-uniform", lower_order_final=lower_order_final).table(gmm, nfe)
    for ours, theirs in ((gs.a, base.a), (gs.c, base.c), (gs.sigmas, base.sigmas)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert gs.sigma_final == pytest.approx(base.sigma_final, rel=1e-12)
    seeds = list(range(20))
    torch.testing.assert_close(sample_seeds(gmm, gs, seeds, 20), sample_seeds(gmm, base, seeds, 20), rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [{"guidance": False}, {"decouple": False}, {"parametrization": "s4s"},
                                     {"parametrization": "s4s-pc"}, {"schedule": "logsnr"}])
def test_every_ablation_starts_as_dpmpp3m(gmm, options):
    schedule = options.get("schedule", "time-uniform")
    base = SOLVERS.get("dpmpp3m")(schedule=schedule).table(gmm, 5)
    table = SOLVERS.get("gs")(**options).table(gmm, 5)
    seeds = list(range(20))
    torch.testing.assert_close(sample_seeds(gmm, table, seeds, 20), sample_seeds(gmm, base, seeds, 20), rtol=0, atol=1e-5)


def test_ablations_have_the_papers_parameter_counts(gmm):
    def count(**options):
        """Coefficient parameters the student's output depends on (nonzero gradient)."""
        solver = SOLVERS.get("gs")(**options)
        params = {k: v.requires_grad_(True) for k, v in solver.parameters_for(gmm, 6).items()}
        noise = torch.randn(4, *gmm.shape, generator=torch.Generator().manual_seed(0))
        solver.solve(params, gmm, 6, noise, None).square().sum().backward()
        return sum(int((v.grad != 0).sum()) for k, v in params.items() if k not in ("theta", "xi"))

    assert count() == 6 * 7 and count(guidance=False) == 6 * 7  # a_hat and c_hat: N(N+1)/2 each
    assert count(parametrization="s4s") == 6 * 7 // 2
    assert count(parametrization="s4s-pc") == 6 * 7 - 1  # LMS + PC: GS's count (GAS Sec. 4.2), minus one
    assert "xi" not in SOLVERS.get("gs")(decouple=False).parameters_for(gmm, 6)
    with pytest.raises(GasbenchError, match="guidance=false"):
        SOLVERS.get("gs")(parametrization="s4s", guidance=False)


def test_stick_breaking_times_stay_strictly_decreasing_between_the_endpoints():
    theta = torch.tensor([40.0, -2.0, 0.0, 60.0, -50.0], dtype=torch.float64)  # saturated sigmoids too
    t = stick_breaking_times(theta, 1.0, 1e-3)
    assert t[0] == 1.0 and t[-1] == 1e-3 and bool((t[1:] < t[:-1]).all())
    uniform = torch.linspace(1.0, 1e-3, 6, dtype=torch.float64)
    torch.testing.assert_close(stick_breaking_times(inverse_stick_breaking(uniform, 1e-3), 1.0, 1e-3), uniform,
                               rtol=1e-13, atol=0)


def test_fit_lowers_validation_loss_keeps_a_valid_table_and_reloads(gmm, gmm_pairs, tmp_path):
    solver = SOLVERS.get("gs")(**FAST)
    result = solver.fit(gmm, 4, *gmm_pairs, progress=False)
    assert result.final_validation_loss < 0.9 * result.initial_validation_loss
    assert result.iterations == 60 and solver.summary["final_validation_loss"] == result.final_validation_loss
    sigmas = solver.integration_sigmas(solver.params, gmm)
    assert sigmas[0] == pytest.approx(gmm.sigma_max) and sigmas[-1] == pytest.approx(gmm.sigma_min)
    assert bool((sigmas[1:] < sigmas[:-1]).all()) and not torch.equal(sigmas, SOLVERS.get("gs")().integration_sigmas(
        SOLVERS.get("gs")().parameters_for(gmm, 4), gmm))
    table = solver.table(gmm, 4)
    assert bool(torch.isfinite(table.a).all() and torch.isfinite(table.c).all() and (table.sigmas > 0).all())
    solver.save_state(tmp_path, gmm, 4)
    saved = json.loads((tmp_path / "solver.json").read_text())
    assert saved["nfe"] == 4 and saved["training"]["iterations"] == 60 and saved["lr"] == FAST["lr"]
    seeds = list(range(50_000, 50_016))
    again = SOLVERS.get("gs")(**FAST)
    assert again.load_state(tmp_path, gmm, 4)
    assert torch.equal(sample_seeds(gmm, again.table(gmm, 4), seeds, 16), sample_seeds(gmm, table, seeds, 16))
    alone = SOLVERS.get("gs")(**FAST)
    assert alone.load_state(tmp_path)  # without the teacher: configuration from solver.json
    assert torch.equal(alone.table(gmm, 4).c, table.c)
    with pytest.raises(GasbenchError, match="NFE 4"):
        alone.table(gmm, 5)
    assert not SOLVERS.get("gs")(**{**FAST, "lr": 0.5}).load_state(tmp_path, gmm, 4)  # other config
    assert not SOLVERS.get("gs")(**{**FAST, "lr": 0.5}).load_state(tmp_path)
    assert not SOLVERS.get("gs")(**FAST).load_state(tmp_path, gmm, 5)  # other NFE


def test_s4s_ablation_trains_too(gmm, gmm_pairs):
    solver = SOLVERS.get("gs")(**{**FAST, "iterations": 30, "parametrization": "s4s-pc"})
    result = solver.fit(gmm, 3, *gmm_pairs, progress=False)
    assert result.final_validation_loss < result.initial_validation_loss


def test_resumed_fit_equals_uninterrupted_fit(gmm, gmm_pairs, resumed_fit):
    # a fit stopped at its 20-iteration checkpoint, then resumed with a larger budget
    config = {k: v for k, v in FAST.items() if k != "iterations"}
    _, _, checkpoint = resumed_fit("gs", config, first=20, total=40)
    with pytest.raises(GasbenchError, match="another solver configuration"):
        SOLVERS.get("gs")(**{**config, "lr": 0.5}).fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=checkpoint)


def test_checkpointed_loss_has_the_same_gradients(gmm, gmm_pairs):
    solver = SOLVERS.get("gs")()
    batch = {k: v[:8] for k, v in gmm_pairs[0].items()}
    grads = []
    for checkpointing in (False, True):
        params = {k: v.requires_grad_(True) for k, v in solver.parameters_for(gmm, 4).items()}
        solver.loss(params, gmm, 4, batch, checkpointing=checkpointing).backward()
        grads.append({k: v.grad for k, v in params.items()})
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-10, atol=1e-12)


def test_nan_loss_stops_with_a_clear_message(gmm, gmm_pairs):
    bad_train = {k: v.clone() for k, v in gmm_pairs[0].items()}
    bad_train["x0"][:] = float("nan")
    with pytest.raises(GasbenchError, match="training loss became nan at iteration 1 .*learning rate"):
        SOLVERS.get("gs")(**FAST).fit(gmm, 4, bad_train, gmm_pairs[1], progress=False)


def test_unknown_loss_or_parametrization_is_refused():
    with pytest.raises(GasbenchError, match="loss"):
        SOLVERS.get("gs")(loss="l3")
    with pytest.raises(GasbenchError, match="parametrization"):
        SOLVERS.get("gs")(parametrization="ld3")


def test_gasbench_run_trains_records_and_reuses_gs(tmp_path):
    from gasbench.runner import RunConfig, run

    config = RunConfig(teacher="gmm", methods=["gs", "dpmpp3m"], nfes=[3], num_samples=32, results_dir=tmp_path,
                       solver_args={"iterations": "40", "train_size": "64", "lr": "1e-2"})
    records = {r["method"]: r for r in run(config)}
    label = "gs+iterations=40+lr=1e-2+train_size=64"
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


def test_gasbench_show_prints_learned_steps_and_refuses_other_cells(gmm, tmp_path, monkeypatch, capsys):
    from helpers import gasbench

    from gasbench.runner import RunConfig, run

    run(RunConfig(teacher="gmm", methods=["gs", "euler"], nfes=[3], num_samples=16, results_dir=tmp_path,
                  solver_args={"iterations": "20", "train_size": "48", "lr": "1e-2"}))
    cell = tmp_path / "gmm" / "gs+iterations=20+lr=1e-2+train_size=48" / "nfe3"
    code, out, _ = gasbench(monkeypatch, capsys, "show", cell)
    assert code == 0 and "gs for teacher 'gmm' at NFE 3" in out and "iterations=20" in out
    learned = SOLVERS.get("gs")(iterations=20, train_size=48, lr=1e-2)
    assert learned.load_state(cell)
    first_step = f"{float(learned.steps(learned.params, gmm, 3)['evaluation sigma'][1]):.4g}"
    assert first_step in out and "(evaluation sigma)" in out and "c[n, j]" in out
    code, _, err = gasbench(monkeypatch, capsys, "show", tmp_path / "gmm" / "euler" / "nfe3")
    assert code == 2 and "no saved learned solver" in err
    (cell / "solver.json").write_text("{not json")
    code, _, err = gasbench(monkeypatch, capsys, "show", cell)
    assert code == 2 and "not a solver state" in err


def test_gradient_checkpointing_bounds_training_memory():
    from gasbench.overhead import _training_step, peak_memory_mb
    from gasbench.core.registry import TEACHERS

    digits = TEACHERS.get("digits")()
    peaks = {}
    for nfe in (2, 6):
        for checkpointing in (False, True):
            step, _, _ = _training_step(SOLVERS.get("gs")(checkpointing=checkpointing), digits, nfe, 8)
            peaks[nfe, checkpointing] = peak_memory_mb(step)
    assert peaks[6, False] > 2 * peaks[2, False]  # activations of every denoiser call are kept
    assert peaks[6, True] < 0.5 * peaks[6, False]
    assert peaks[6, True] < 1.5 * peaks[2, True]  # with checkpointing, memory hardly grows with NFE


# --- the GAS release's generalized solver, transcribed (github.com/3145tttt/GAS) -----------------------------------


def release_gs(denoise, time, t, xi, a_diff, c_diff, y, evaluation="release"):
    """``GeneralizedSolver.sample`` (src/gas/generalized_solver.py:356-402) with theoretical guidance,
    written out in its VP variables for an EDM network: order N = steps (main.py:71-72), so update
    ``step`` has order min(step, 3) with no lower final order; a{i}_diff / c{i}_diff[n] are
    ``a_diff`` / ``c_diff``[n, i - 1]. ``evaluation="direct"`` replaces its model_fn by
    D(y / alpha(t_n), sigma(t_n + xi_n)). Starts from the VP state ``y`` at t[0], returns y at t[N]."""
    b0, bd = time.beta_min, time.beta_d
    log_alpha = lambda t: -0.25 * t**2 * bd - 0.5 * t * b0  # noqa: E731  NoiseScheduleVP('linear')
    alpha = lambda t: torch.exp(log_alpha(t))  # noqa: E731
    std = lambda t: torch.sqrt(1.0 - torch.exp(2.0 * log_alpha(t)))  # noqa: E731
    lam = lambda t: log_alpha(t) - torch.log(std(t))  # noqa: E731
    edm_sigma = lambda t: torch.sqrt(torch.exp(0.5 * bd * t**2 + b0 * t) - 1)  # noqa: E731  EDMModel.sigma
    s = lambda t: 1 / torch.sqrt(1 + edm_sigma(t) ** 2)  # noqa: E731  EDMModel.s

    def noise(y, t):  # model_wrapper(EDMModel.forward, model_type="x_start")
        return (y - alpha(t) * denoise(y / s(t), edm_sigma(t))) / std(t)

    def model_fn(y, n):  # GeneralizedSolver.model_fn
        if evaluation == "direct":
            return denoise(y / alpha(t[n]), edm_sigma(t[n] + xi[n]))
        return (y - std(t[n]) * noise(y, t[n] + xi[n])) / alpha(t[n])

    return release_updates(model_fn, lam, alpha, std, t, y, a_diff, c_diff)


def random_gs(gmm, nfe, *, scale=1.0, xi=True, seed=0, **options):
    """GS on gmm with the release's base order (unless ``options`` say otherwise), random steps,
    offsets (the first kept at zero) and corrections."""
    g = torch.Generator().manual_seed(seed)
    solver = SOLVERS.get("gs")(**{"lower_order_final": False, **options})
    params = solver.parameters_for(gmm, nfe)
    params["theta"] = params["theta"] + 0.3 * torch.randn(nfe - 1, generator=g, dtype=torch.float64)
    if xi:
        params["xi"][1:] = 0.03 * torch.randn(nfe - 1, generator=g, dtype=torch.float64)
    for key in ("a_hat", "c_hat"):
        params[key] = (scale * 0.05 * torch.randn(nfe, nfe, generator=g, dtype=torch.float64)).tril()
    return solver, params


def gs_and_release(gmm, solver, params, nfe, evaluation="release", rescale=None):
    """(GS's sample through the executor, the release's from the same noise, steps and parameters).
    ``rescale(a_hat, c_hat, alpha)`` maps GS's corrections to the release's a_diff, c_diff first."""
    noise = torch.randn(6, *gmm.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = execute(solver.table_from(params, gmm, nfe), gmm.denoiser(None), noise * gmm.sigma_max)
    t = stick_breaking_times(params["theta"], gmm.time.t(gmm.sigma_max), gmm.time.t(gmm.sigma_min))
    alpha = (1 + gmm.time.sigma(t) ** 2).rsqrt()
    a_hat, c_hat = params["a_hat"], params["c_hat"]
    if rescale is not None:
        a_hat, c_hat = rescale(a_hat, c_hat, alpha)
    # GS's [n, j] (on x_j, D_j) is the release's [n, n - j] (a{i}_diff on x_prev_list[-i], i = n - j + 1)
    flip = lambda m: torch.stack([torch.cat([m[n, : n + 1].flip(0), m.new_zeros(nfe - n - 1)]) for n in range(nfe)])  # noqa: E731
    y = release_gs(lambda x, sigma: gmm.denoise(x, sigma, None), gmm.time, t, params.get("xi", torch.zeros(nfe)),
                   flip(a_hat), flip(c_hat), alpha[0] * noise * gmm.sigma_max, evaluation)
    return ours, y / alpha[-1]


@pytest.mark.parametrize("nfe", [4, 6])
def test_gs_is_the_release_generalized_solver(gmm, nfe):
    """Steps, offsets and corrections all random: GS (lower_order_final=false) samples as the release's does."""
    solver, params = random_gs(gmm, nfe)
    ours, theirs = gs_and_release(gmm, solver, params, nfe)
    assert float(ours.abs().max()) > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_corrections_act_on_the_vp_state_or_on_x(gmm):
    """correction_space=vp adds a_hat, c_hat to the release's coefficients on y = alpha x;
    correction_space=edm adds them on x, i.e. a_hat alpha_{n+1} / alpha_j and c_hat alpha_{n+1} on y."""
    nfe = 4
    assert SOLVERS.get("gs")().config["correction_space"] == "vp"  # the default
    solver, params = random_gs(gmm, nfe, xi=False)
    ours, theirs = gs_and_release(gmm, solver, params, nfe)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    edm, _ = random_gs(gmm, nfe, xi=False, correction_space="edm")
    on_x, _ = gs_and_release(gmm, edm, params, nfe)
    assert float((on_x - theirs).abs().max()) > 1e-2  # the two spaces are different solvers

    def to_vp(a_hat, c_hat, alpha):
        rows = torch.arange(nfe)
        return a_hat * alpha[rows + 1, None] / alpha[None, :nfe], c_hat * alpha[rows + 1, None]

    _, converted = gs_and_release(gmm, edm, params, nfe, rescale=to_vp)
    torch.testing.assert_close(on_x, converted, rtol=1e-9, atol=1e-9)


def test_decoupled_evaluation_is_the_releases_or_direct(gmm):
    """decouple_space=vp converts the network's noise prediction on the unchanged VP state at
    t_n + xi_n with t_n's alpha, sigma (GeneralizedSolver.model_fn); edm takes D(x_n, sigma(t_n + xi_n))."""
    nfe = 4
    solver, params = random_gs(gmm, nfe, scale=0.0)
    ours, theirs = gs_and_release(gmm, solver, params, nfe)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    direct, _ = random_gs(gmm, nfe, decouple_space="edm")
    on_x, theirs_direct = gs_and_release(gmm, direct, params, nfe, evaluation="direct")
    torch.testing.assert_close(on_x, theirs_direct, rtol=1e-9, atol=1e-9)
    assert float((on_x - theirs).abs().max()) > 1e-3


def test_first_evaluation_keeps_the_direct_form(gmm):
    """Eq. 13 evaluates x_T itself first, so the offset xi_0 moves only the sigma of that call."""
    nfe = 4
    params = SOLVERS.get("gs")().parameters_for(gmm, nfe)
    assert SOLVERS.get("gs")().config["decouple_space"] == "vp"  # the default
    params["xi"][0] = 0.05
    tables = [SOLVERS.get("gs")(decouple_space=space).table_from(params, gmm, nfe) for space in ("vp", "edm")]
    for ours, theirs in ((tables[0].a, tables[1].a), (tables[0].c, tables[1].c), (tables[0].sigmas, tables[1].sigmas)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert float(tables[0].sigmas[0]) > gmm.sigma_max * 1.1


@pytest.mark.parametrize("nfe", [3, 4, 5])
def test_base_order_is_the_releases_never_lowered_at_the_end(gmm, nfe):
    """Untrained GS with lower_order_final=false is the release's untrained GS: orders min(step, 3),
    e.g. 1, 2, 3, 3 at NFE 4; the default, true (orders 1, 2, 2, 1 at NFE 4), is another solver."""
    solver, params = random_gs(gmm, nfe, scale=0.0, xi=False)
    ours, theirs = gs_and_release(gmm, solver, params, nfe)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    lowered = SOLVERS.get("gs")()  # the default
    assert lowered.config["lower_order_final"]
    assert float((gs_and_release(gmm, lowered, params, nfe)[0] - theirs).abs().max()) > 1e-4


def test_old_form_is_reachable_through_the_options(gmm):
    """correction_space=edm, decouple_space=edm, lower_order_final=true: GS as gasbench had it,
    x_{n+1} = DPM-Solver++(3M, lower order final) + a_hat, c_hat on x, evaluating D(x_n, sigma(t_n + xi_n))."""
    nfe = 4
    old = {"correction_space": "edm", "decouple_space": "edm", "lower_order_final": True}
    solver, params = random_gs(gmm, nfe, **old)

    def loop(model, x, sigmas, *, eval_sigmas, a_hat, c_hat):
        xs, ds = [x], []
        for n, k in enumerate((1, 2, 2, 1)):
            ds.append(model(xs[n], eval_sigmas[n]))
            x_next = dpmpp_update(xs[n], sigmas[n - k + 1 : n + 1], ds[n - k + 1 :], sigmas[n + 1])
            for i, vector in enumerate(derivative_basis(sigmas[n - k + 1 : n + 1], ds[n - k + 1 :], sigmas[n + 1])):
                x_next = x_next + c_hat[n, n - i] * vector
            for j in range(n - k + 1):
                x_next = x_next + c_hat[n, j] * ds[j]
            xs.append(x_next + sum((a_hat[n, j] * xs[j] for j in range(n + 1)), LinComb({})))
        return xs[-1]

    sigmas = solver.integration_sigmas(params, gmm)
    times = stick_breaking_times(params["theta"], gmm.time.t(gmm.sigma_max), gmm.time.t(gmm.sigma_min))
    expected = trace(loop, sigmas, eval_sigmas=gmm.time.sigma(times[:-1] + params["xi"]), a_hat=params["a_hat"],
                     c_hat=params["c_hat"])
    table = solver.table_from(params, gmm, nfe)
    for ours, theirs in ((table.a, expected.a), (table.c, expected.c), (table.sigmas, expected.sigmas)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
