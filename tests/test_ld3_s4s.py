"""LD3, S4S (LMS, PC, SS) and S4S-Alt: each starts as the handcrafted solver it wraps, learns under
the relaxed objective, and reloads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.executor import execute
from gasbench.solvers.learned import project_to_ball
from gasbench.solvers.ld3 import decoupled_points, decoupling_bound, softmax_steps
from gasbench.solvers.s4s import lms_count

SEEDS = list(range(50_000, 50_024))


def samples(teacher, table):
    return sample_seeds(teacher, table, SEEDS, len(SEEDS))


@pytest.mark.parametrize("method, options, base, base_options", [
    ("ld3", {}, "unipc", {}),
    ("ld3", {"base": "ipndm", "order": 4}, "ipndm", {}),
    ("ld3", {"base": "dpmpp3m", "space": "time"}, "dpmpp3m", {}),
    ("ld3", {"base": "unipc", "schedule": "edm"}, "unipc", {"schedule": "edm"}),
    ("s4s", {}, "ipndm", {"order": 3}),
    ("s4s", {"order": 4}, "ipndm", {}),
    ("s4s", {"init": "dpmpp"}, "dpmpp3m", {}),
    ("s4s", {"init": "dpmpp", "order": 2, "schedule": "time-uniform"}, "dpmpp2m", {"schedule": "time-uniform"}),
    ("s4s-pc", {}, "unipc", {}),
    ("s4s-pc", {"init": "dpmpp"}, "dpmpp3m", {}),
    ("s4s-alt", {}, "ipndm", {"order": 3}),
])
@pytest.mark.parametrize("nfe", [1, 3, 6])
def test_untrained_solver_is_the_handcrafted_one_it_wraps(gmm, method, options, base, base_options, nfe):
    learned = SOLVERS.get(method)(**options)
    ours = learned.table(gmm, nfe)
    # on the learned solver's schedule (a handcrafted solver's own default may be another)
    schedule = learned.resolved_config(gmm)["schedule"]
    theirs = SOLVERS.get(base)(**{"schedule": schedule, **base_options}).table(gmm, nfe)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-12, atol=0)
    torch.testing.assert_close(samples(gmm, ours), samples(gmm, theirs), rtol=0, atol=1e-6)


def test_untrained_s4s_ss_is_dpm_solver_2(gmm):
    """DPM-Solver-2 (Lu et al., 2022a, Alg. 1 with r1 = 1/2) in sigma space: an Euler half step
    to the log-SNR midpoint, then the full step with the midpoint's noise prediction."""
    sigmas = SOLVERS.get("s4s-ss")().schedule_sigmas(gmm, 3)
    table = SOLVERS.get("s4s-ss")().table(gmm, 6)
    noise = torch.randn(8, *gmm.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = noise * gmm.sigma_max
    expected = x.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        mid = (s * s_next).sqrt()
        eps = (expected - gmm.denoise(expected, s, None)) / s
        u = expected + (mid - s) * eps
        expected = expected + (s_next - s) * (u - gmm.denoise(u, mid, None)) / mid
    torch.testing.assert_close(execute(table, gmm.denoiser(None), x), expected, rtol=0, atol=1e-10)
    with pytest.raises(GasbenchError, match="even NFE"):
        SOLVERS.get("s4s-ss")().table(gmm, 5)


def test_parameter_counts_follow_table_1(gmm):
    assert lms_count(3, 6) == 3 * (2 * 6 + 1 - 3) // 2
    assert SOLVERS.get("s4s-pc")().coefficient_count(6) == 3 * (2 * 6 + 1 - 3) // 2 + 3 * (2 * 5 + 1 - 3) // 2 + 5
    with pytest.raises(GasbenchError, match="order 1-3"):
        SOLVERS.get("s4s")(init="dpmpp", order=4)
    with pytest.raises(GasbenchError, match="init"):
        SOLVERS.get("s4s-pc")(init="ipndm")


def test_learned_steps_are_monotone_with_fixed_endpoints_and_bounded_decoupling():
    logits = torch.tensor([30.0, -30.0, 0.5, 2.0], dtype=torch.float64)
    points = softmax_steps(logits, 4.0, -6.0)
    assert points[0] == 4.0 and points[-1] == -6.0 and bool((points[1:] < points[:-1]).all())
    bound = decoupling_bound(logits, points, 0.5, "steps")
    assert bound == pytest.approx(float(0.5 * (points[:-1] - points[1:]).min()))
    evaluation = decoupled_points(points, torch.tensor([100.0, -100.0, 0.0], dtype=torch.float64), bound)
    assert evaluation[0] == points[0] and evaluation.shape == (4,)
    torch.testing.assert_close((evaluation - points[:-1]).abs()[1:], torch.tensor([bound, bound, 0.0], dtype=torch.float64))
    assert decoupling_bound(logits, points, 0.5, "logits") == pytest.approx(0.5 * 1.5)  # |0.5 - 2.0|


def test_projection_keeps_offsets_inside_the_ball():
    offsets = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.01, 1, 2, 3, 4]).view(-1, 1, 1, 1)
    projected = project_to_ball(offsets, 0.5)
    norms = projected.flatten(1).norm(dim=1)
    assert bool((norms <= 0.5 + 1e-6).all())
    torch.testing.assert_close(projected[0], offsets[0])  # already inside: unchanged


FAST = {"iterations": 40, "batch_size": 16, "train_size": 96}


@pytest.mark.parametrize("method, options", [
    ("ld3", {}),
    ("s4s", {"lr": 1e-2}),
    ("s4s-pc", {"lr": 1e-2}),
    ("s4s-ss", {"lr": 1e-2}),
    ("s4s-alt", {"lr": 1e-2, "time_lr": 5e-2, "rounds": 2}),
])
def test_short_fit_lowers_validation_loss_and_reloads_identically(gmm, gmm_pairs, tmp_path, method, options):
    solver = SOLVERS.get(method)(**FAST, **options)
    result = solver.fit(gmm, 4, *gmm_pairs, progress=False)
    assert result.final_validation_loss < 0.95 * result.initial_validation_loss, result
    assert solver.radius > 0 and solver.start_offsets is not None
    assert float(solver.start_offsets.flatten(1).norm(dim=1).max()) <= solver.radius * (1 + 1e-9)
    assert float(solver.start_offsets.abs().max()) > 0  # the start points did move
    solver.save_state(tmp_path, gmm, 4)
    reloaded = SOLVERS.get(method)(**FAST, **options)
    assert reloaded.load_state(tmp_path, gmm, 4)
    assert torch.equal(samples(gmm, reloaded.table(gmm, 4)), samples(gmm, solver.table(gmm, 4)))


def test_relax_zero_is_the_exact_objective(gmm, gmm_pairs):
    solver = SOLVERS.get("s4s")(relax=0.0, iterations=2, batch_size=4)
    solver.fit(gmm, 4, *gmm_pairs, progress=False)
    assert solver.radius == 0 and solver.start_offsets is None


def test_s4s_alt_alternates_between_coefficients_and_time_steps(gmm, gmm_pairs):
    solver = SOLVERS.get("s4s-alt")(iterations=8, rounds=2, batch_size=8)
    assert [solver.trainable(i) == {"b"} for i in range(8)] == [True, True, False, False] * 2
    params = {k: v.clone().requires_grad_(True) for k, v in solver.parameters_for(gmm, 4).items()}
    optimizer = solver.make_optimizer(params)
    batch = {k: v[:8] for k, v in gmm_pairs[0].items()}
    for iteration, moved in ((0, {"b"}), (2, {"logits", "offsets"})):
        before = {k: v.detach().clone() for k, v in params.items()}
        solver.training_step(params, optimizer, gmm, 4, batch, torch.Generator().manual_seed(0), iteration)
        changed = {k for k in params if not torch.equal(params[k].detach(), before[k])}
        assert changed <= moved and changed & moved, (iteration, changed)


@pytest.mark.parametrize("method, config", [("s4s", {"batch_size": 8, "lr": 1e-2}), ("ld3", {"batch_size": 4})])
def test_relaxed_fit_resumes_bit_exactly(resumed_fit, method, config):
    _, resumed, checkpoint = resumed_fit(method, config, first=5, total=10)
    assert torch.load(checkpoint, weights_only=True)["start_offsets"] is not None
    assert float(resumed.start_offsets.abs().max()) > 0


# --- fidelity to the official LD3 code (vinhsuhi/LD3) and the S4S paper -------------------------------


def official_prior_bound(resolution: int, channel: int, steps: int) -> float:
    """LD3 utils.py:196-206 (adjust_hyper with fix_bound false): the start-point radius."""
    return round(0.001 * resolution * resolution * channel / (steps**2), 8)


def official_lambda_steps(lambda1, lambda2, lambda_max, lambda_min, window_rate=0.5):
    """LD3 trainer.py:609-624 (discretize_model_wrapper, lambda mode), returned in lambda."""
    lamb_plus = torch.nn.functional.softmax(lambda1, dim=0)
    lamb_md = torch.cumsum(lamb_plus, dim=0)
    normed = (lamb_md - lamb_md.min()) / (lamb_md.max() - lamb_md.min())
    lamb_steps1 = normed * (lambda_max - lambda_min) + lambda_min
    mask = torch.ones_like(lamb_steps1)
    cloned_lamb1 = lambda1.clone().detach()
    max_move = (cloned_lamb1[1:] - cloned_lamb1[:-1]).abs().min().item() * window_rate
    clipped_lamb2 = torch.clamp(lambda2, min=-max_move, max=max_move)
    mask[0] = 0.0
    mask[-1] = 0.0
    return lamb_steps1, lamb_steps1 + clipped_lamb2 * mask


@pytest.mark.parametrize("nfe", [3, 4, 10])
def test_ld3_radius_is_the_official_formula(gmm, gmm_pairs, nfe):
    channel, resolution, _ = gmm.shape
    official = official_prior_bound(resolution, channel, nfe)
    assert SOLVERS.get("ld3")().start_radius(gmm, nfe) == pytest.approx(official, rel=1e-6)
    assert SOLVERS.get("ld3")(relax=0.5).start_radius(gmm, nfe) == pytest.approx(official / 2, rel=1e-6)
    # S4S: Appendix G.2's m^(-5/2), anchored where m is LD3's own count 2N - 1
    s4s = SOLVERS.get("s4s")()
    ratio = (2 * nfe - 1) / s4s.coefficient_count(nfe)
    assert s4s.start_radius(gmm, nfe) == pytest.approx(official * ratio**2.5, rel=1e-6)
    if nfe == 4:  # the fit uses it
        solver = SOLVERS.get("ld3")(iterations=1)
        solver.fit(gmm, nfe, *gmm_pairs, progress=False)
        assert solver.radius == pytest.approx(official, rel=1e-6)


def test_ld3_decoupling_window_is_the_official_smallest_logit_gap(gmm):
    """Our N logits are the official N + 1 without its inert first one (set far off here so that
    its gap does not count); the offsets are the official ones without the masked ends."""
    solver = SOLVERS.get("ld3")()
    logits = torch.tensor([0.3, -0.4, 0.9, 0.1], dtype=torch.float64)
    offsets = torch.tensor([0.5, -0.5, 0.01], dtype=torch.float64)
    sigmas, evaluation = solver.step_sigmas({"logits": logits, "offsets": offsets}, gmm)
    lambda_min, lambda_max = -torch.log(torch.tensor([gmm.sigma_max, gmm.sigma_min], dtype=torch.float64))
    official_logits = torch.cat([logits[:1] + 10, logits])
    official_offsets = torch.cat([offsets.new_ones(1), offsets, offsets.new_ones(1)])
    steps, decoupled = official_lambda_steps(official_logits, official_offsets, lambda_max, lambda_min)
    # GAP_EPS (1e-5 of the range per gap) is the only difference
    torch.testing.assert_close(-torch.log(sigmas), steps, rtol=0, atol=1e-3)
    torch.testing.assert_close(-torch.log(evaluation), decoupled[:-1], rtol=0, atol=1e-3)
    assert float((-torch.log(evaluation) + torch.log(sigmas[:-1]))[1]) == pytest.approx(0.5 * 0.7, abs=1e-3)  # clipped
    stepwise = SOLVERS.get("ld3")(window_from="steps").step_sigmas({"logits": logits, "offsets": offsets}, gmm)[1]
    shift = -torch.log(stepwise) + torch.log(sigmas[:-1])
    assert float(shift[1]) == pytest.approx(0.5, abs=1e-9)  # inside the step-gap window: not clipped


def test_ld3_start_point_moves_only_where_the_loss_drops(gmm, gmm_pairs):
    """trainer.py:475-489, 520-528: an SGD step of lr 12 / N, projected onto the ball, kept per
    pair only if that pair's loss drops. Pair 1's gradient is reversed, so its step goes uphill."""
    nfe, solver = 4, SOLVERS.get("ld3")()
    solver.radius = solver.start_radius(gmm, nfe)
    params = solver.parameters_for(gmm, nfe)
    train = gmm_pairs[0]
    shift = torch.zeros(2, *gmm.shape, dtype=torch.float64, requires_grad=True)
    batch = {"noise": train["noise"][:2].to(torch.float64) + shift, "x0": train["x0"][:2]}
    solver.training_loss(params, gmm, nfe, batch, torch.Generator()).backward()
    shift.grad[1] *= -1
    moved = solver.move_start_offsets(params, gmm, nfe, batch, shift)
    candidate = project_to_ball(-12 / nfe * shift.grad, solver.radius)
    torch.testing.assert_close(moved[0], candidate[0])
    assert float(moved[0].norm()) == pytest.approx(solver.radius)  # the SGD step left the ball
    assert torch.equal(moved[1], torch.zeros_like(moved[1]))
    old = SOLVERS.get("ld3")(start_update="normalised-step")
    old.radius = solver.radius
    assert float(old.move_start_offsets(params, gmm, nfe, batch, shift)[1].norm()) == pytest.approx(solver.radius / 2)


def test_ld3_optimisers_are_the_official_ones(gmm, gmm_pairs):
    """trainer.py:154-162: RMSprop (lr 5e-3, momentum 0.9) on the logits, plain SGD at 0.1 / N
    (utils.py:202) on the offsets: one step moves the offsets by exactly lr x their gradient."""
    nfe, solver = 4, SOLVERS.get("ld3")(relax=0.0)
    params = {k: v.clone().requires_grad_(True) for k, v in solver.parameters_for(gmm, nfe).items()}
    params["logits"].data += torch.tensor([0.0, 0.4, -0.3, 0.2], dtype=torch.float64)  # a non-zero window
    optimizer = solver.make_optimizer(params)
    assert [type(o) for o in optimizer.optimizers] == [torch.optim.RMSprop, torch.optim.SGD]
    assert optimizer.optimizers[0].param_groups[0]["momentum"] == 0.9
    before = params["offsets"].detach().clone()
    batch = {**{k: v[:2] for k, v in gmm_pairs[0].items()}, "index": torch.tensor([0, 1])}
    solver.training_step(params, optimizer, gmm, nfe, batch, torch.Generator(), 0)
    gradient = params["offsets"].grad
    assert float(gradient.abs().max()) > 0
    torch.testing.assert_close(params["offsets"].detach(), before - 0.1 / nfe * gradient)
    together = SOLVERS.get("ld3")(offset_optimizer="rmsprop").make_optimizer(params)
    assert isinstance(together, torch.optim.RMSprop) and len(together.param_groups[0]["params"]) == 2


@pytest.mark.parametrize("width, extra", [("k+1", 0), ("k", -1)])
def test_s4s_pc_corrector_width_and_count(gmm, gmm_pairs, width, extra):
    """Table 1: k(2N + 1 - k) for LMS + PC with k corrector coefficients per step; ours has no
    corrector on the last step (``extra``), and k + 1 per step holds UniPC's UniC-k. Every counted
    coefficient learns (has a gradient), and each corrector is consistent (its weights sum to 1)."""
    nfe, solver = 6, SOLVERS.get("s4s-pc")(corrector_width=width)
    lms = 3 * (2 * nfe + 1 - 3) // 2
    expected = 2 * lms + extra if width == "k" else lms + 3 * (2 * (nfe - 1) + 1 - 3) // 2 + nfe - 1
    assert solver.coefficient_count(nfe) == expected
    params = {k: v.clone().requires_grad_(True) for k, v in solver.parameters_for(gmm, nfe).items()}
    assert params["corrector"].shape == (nfe - 1, 3 + (width == "k+1"))
    torch.testing.assert_close(params["corrector"].detach().sum(1), torch.ones(nfe - 1, dtype=torch.float64))
    solver.loss(params, gmm, nfe, {k: v[:8] for k, v in gmm_pairs[0].items()}).backward()
    assert sum(int((p.grad != 0).sum()) for p in params.values()) == expected
    dpmpp = SOLVERS.get("s4s-pc")(corrector_width=width, init="dpmpp").parameters_for(gmm, nfe)
    torch.testing.assert_close(dpmpp["corrector"][:, 1:], dpmpp["b"][:-1, : dpmpp["corrector"].shape[1] - 1])
    with pytest.raises(GasbenchError, match="order 2 or more"):
        SOLVERS.get("s4s-pc")(corrector_width="k", order=1)


def test_s4s_alt_starts_from_an_ld3_fit(gmm, gmm_pairs):
    solver = SOLVERS.get("s4s-alt")(init_steps="ld3", iterations=0)
    result = solver.fit(gmm, 4, *gmm_pairs, progress=False)
    ld3 = solver.ld3_solver()
    assert ld3.config["base"] == "ipndm" and ld3.config["order"] == 3 and ld3.config["window_from"] == "steps"
    start = ld3.fit(gmm, 4, *({k: v[:50] for k, v in data.items()} for data in gmm_pairs), progress=False)
    assert result.passes == start.passes and start.passes["total"] > 0  # the record holds what the start cost
    for key in ("logits", "offsets"):
        assert torch.equal(solver.params[key], ld3.params[key]), key
    assert not torch.equal(solver.params["logits"], solver.initial_steps(gmm, 4)["logits"])


PIXEL, LATENT, TEXT = (SimpleNamespace(modality=m) for m in ("pixel", "latent", "text"))


@pytest.mark.parametrize("method, teacher, expected", [
    # LD3 configs/cifar10.yml, latent_diff_LSUN.yml, stable_diff_v1-5.yml
    ("ld3", PIXEL, {"loss": "lpips-vgg", "base": "unipc", "order": 3, "space": "logsnr", "window_from": "logits",
                    "batch_size": 2, "train_size": 50, "iterations": 175, "momentum": 0.9, "relax": 1.0,
                    "offset_optimizer": "sgd", "offset_lr": 0.1}),
    ("ld3", LATENT, {"base": "unipc-bh2", "order": 3, "space": "time", "window_from": "steps", "batch_size": 1,
                     "train_size": 50, "iterations": 250, "offset_lr": 0.001}),
    ("ld3", TEXT, {"base": "unipc-bh2", "order": 2, "batch_size": 1, "train_size": 25, "iterations": 125}),
    # S4S Appendix G.2
    ("s4s", PIXEL, {"loss": "lpips-vgg", "train_size": 700, "batch_size": 20, "iterations": 350}),
    ("s4s-pc", LATENT, {"loss": "lpips-vgg", "train_size": 600, "batch_size": 20, "iterations": 300}),
    ("s4s-ss", PIXEL, {"train_size": 700, "batch_size": 20, "iterations": 350}),
    ("s4s-alt", PIXEL, {"loss": "lpips-vgg", "train_size": 1400, "batch_size": 40, "rounds": 8, "iterations": 560,
                        "init_steps": "ld3"}),
    ("s4s-alt", LATENT, {"train_size": 1000, "batch_size": 40, "rounds": 8, "iterations": 400}),
])
def test_paper_budgets(method, teacher, expected):
    cls = SOLVERS.get(method)
    budget = cls.paper_budget(teacher)
    assert {k: budget[k] for k in expected} == expected
    solver = cls(**budget)  # every entry is an option with an allowed value
    if method == "s4s-alt":
        assert solver.trainable(budget["iterations"] // 16) == {"logits", "offsets"}  # phases of one epoch
    assert cls.validation_size == {"ld3": 50, "s4s-alt": 400}.get(method, 200)
