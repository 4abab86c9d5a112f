"""LD3, S4S (LMS, PC, SS) and S4S-Alt: each starts as the handcrafted solver it wraps, learns under
the relaxed objective, and reloads."""

from __future__ import annotations

import pytest
import torch

from gasbench.errors import GasbenchError
from gasbench.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.executor import execute
from gasbench.solvers.learned import project_to_ball
from gasbench.solvers.ld3 import decoupled_points, softmax_steps
from gasbench.solvers.s4s import lms_count

SEEDS = list(range(50_000, 50_024))


def samples(teacher, table):
    return sample_seeds(teacher, table, SEEDS, len(SEEDS))


@pytest.mark.parametrize("method, options, base, base_options", [
    ("ld3", {}, "ipndm", {}),
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
    ours = SOLVERS.get(method)(**options).table(gmm, nfe)
    theirs = SOLVERS.get(base)(**base_options).table(gmm, nfe)
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
    evaluation = decoupled_points(points, torch.tensor([100.0, -100.0, 0.0], dtype=torch.float64), 0.5)
    bound = 0.5 * (points[:-1] - points[1:]).min()
    assert evaluation[0] == points[0] and evaluation.shape == (4,)
    torch.testing.assert_close((evaluation - points[:-1]).abs()[1:], torch.stack([bound, bound, bound.new_zeros(())]))


def test_projection_keeps_offsets_inside_the_ball():
    offsets = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.01, 1, 2, 3, 4]).view(-1, 1, 1, 1)
    projected = project_to_ball(offsets, 0.5)
    norms = projected.flatten(1).norm(dim=1)
    assert bool((norms <= 0.5 + 1e-6).all())
    torch.testing.assert_close(projected[0], offsets[0])  # already inside: unchanged


FAST = {"iterations": 40, "batch_size": 16, "train_size": 96}


@pytest.mark.parametrize("method, options", [
    ("ld3", {"lr": 5e-2}),
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


def test_relaxed_fit_resumes_bit_exactly(resumed_fit):
    _, resumed, checkpoint = resumed_fit("s4s", {"batch_size": 8, "lr": 1e-2}, first=5, total=10)
    assert torch.load(checkpoint, weights_only=True)["start_offsets"] is not None
    assert float(resumed.start_offsets.abs().max()) > 0
