"""LD3-style learned time steps (Tong et al., 2024, "Learning to Discretize Denoising Diffusion
ODEs"; S4S Appendix E restates the parametrisation) on a handcrafted base solver.

Only the time steps are learned, plus a decoupled copy of them for the network:

* steps: unconstrained logits -> softmax -> cumulative sum -> rescaled between the fixed
  endpoints (S4S Eq. E.1), in diffusion time t (``space=time``, the teacher's VP-linear time) or
  in log-SNR lambda = -log sigma (``space=logsnr``), so they stay strictly monotone whatever the
  logits become. The logits start at the log of the ``schedule``'s gaps, so the untrained
  solver *is* the base solver on that schedule;
* decoupling (S4S Eq. E.2): the denoiser is evaluated at step i shifted by an offset clipped to
  +/- ``window`` x the smallest gap between neighbouring steps; the first point (x_T) is not
  shifted and the last is never evaluated;
* the base (``base``: iPNDM, DPM-Solver++(2M/3M), UniPC) is the registered handcrafted loop,
  traced at the learned steps into the one executor's table, evaluating at the decoupled ones.

Objective: the soft teacher (LD3 Eq. 9, the relaxed objective S4S Eq. 7 borrows): the student
may start anywhere in a ball around the teacher's noise, of squared radius
1e-3 x C x H x W / N^2 in unit-noise space (``relax`` scales the radius; 0 gives the exact
objective). Budget: LD3's tiny one, 50 training and 50 validation pairs, batch 2, RMSprop at
lr 5e-3 (LD3 uses SGD for the offsets; one RMSprop for both spares a second step size that would
need tuning per teacher). Loss: LD3's LPIPS is ``loss=lpips-vgg``; the built-in 8x8 teachers
default to L1 like every learned method here (see gasbench.solvers.learned).
"""

from __future__ import annotations

import math

import torch

from gasbench.errors import GasbenchError
from gasbench.registry import SOLVERS, register_solver
from gasbench.solvers.executor import SolverTable, trace
from gasbench.solvers.learned import LOSSES, TRAINING_OPTIONS, LearnedSolver
from gasbench.solvers.schedules import make_sigmas

SPACES = ("time", "logsnr")
GAP_EPS = 1e-5  # every gap keeps at least this fraction of the range, as GS's stick-breaking portions
BASES = ("ipndm", "dpmpp2m", "dpmpp3m", "unipc", "unipc-bh2")


def to_space(sigmas: torch.Tensor, space: str, teacher) -> torch.Tensor:
    """Noise levels -> the coordinate the steps are learned in."""
    if space == "logsnr":
        return -torch.log(sigmas)
    return torch.tensor([teacher.time.t(float(s)) for s in sigmas], dtype=torch.float64)


def from_space(points: torch.Tensor, space: str, teacher) -> torch.Tensor:
    """The coordinate -> noise levels (differentiable)."""
    return torch.exp(-points) if space == "logsnr" else teacher.time.sigma(points)


def softmax_steps(logits: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """S4S Eq. E.1: N + 1 strictly monotone points from ``start`` to ``end`` whose gaps are
    proportional to softmax(logits) (floored at ``GAP_EPS``, so saturated logits cannot merge two
    steps); the endpoints are exact."""
    fractions = torch.softmax(logits, 0) * (1 - len(logits) * GAP_EPS) + GAP_EPS
    cumulative = torch.cumsum(fractions, 0)
    inner = start + (end - start) * cumulative[:-1] / cumulative[-1]
    return torch.cat([logits.new_tensor([start]), inner, logits.new_tensor([end])])


def decoupled_points(points: torch.Tensor, offsets: torch.Tensor, window: float) -> torch.Tensor:
    """S4S Eq. E.2: the N evaluation points, point i shifted by its offset clipped to
    +/- window x the smallest gap; point 0 (x_T) stays where it is."""
    bound = window * (points[1:] - points[:-1]).abs().min()
    return torch.cat([points[:1], points[1:-1] + torch.clamp(offsets, -bound, bound)])


def evaluated_at(model, x, sigmas, *, base_loop, eval_sigmas, **options):
    """Run a handcrafted ``base_loop`` on ``sigmas`` whose k-th denoiser call is made at
    ``eval_sigmas[k]`` instead (each of these loops evaluates once per step, at the step)."""
    calls = iter(eval_sigmas)
    return base_loop(lambda y, _sigma: model(y, next(calls)), x, sigmas, **options)


class LearnedStepsMixin:
    """The time-step parameters LD3 and S4S-Alt share: ``logits`` and ``offsets``."""

    def initial_steps(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        cfg = self.resolved_config(teacher)
        points = to_space(make_sigmas(cfg["schedule"], nfe, teacher), cfg["space"], teacher)
        gaps = (points[1:] - points[:-1]).abs()
        fractions = (gaps / gaps.sum() - GAP_EPS) / (1 - nfe * GAP_EPS)  # inverse of softmax_steps' floor
        return {"logits": torch.log(fractions),
                "offsets": torch.zeros(nfe - 1, dtype=torch.float64)}

    def step_sigmas(self, params, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(integration sigmas, N + 1; evaluation sigmas, N) of ``params``."""
        space = self.config["space"]
        ends = to_space(torch.tensor([teacher.sigma_max, teacher.sigma_min], dtype=torch.float64), space, teacher)
        points = softmax_steps(params["logits"], float(ends[0]), float(ends[1]))
        evaluation = decoupled_points(points, params["offsets"], self.config["window"])
        return from_space(points, space, teacher), from_space(evaluation, space, teacher)

    def steps(self, params, teacher, nfe: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            sigmas, evaluation = self.step_sigmas(params, teacher)
        return {"step sigma": sigmas[:-1], "evaluation sigma": evaluation}


@register_solver("ld3", description="LD3 (Tong et al., 2024): learned time steps + decoupling on a handcrafted base solver")
class LD3(LearnedStepsMixin, LearnedSolver):
    """LD3; see the module docstring."""

    name = "ld3"
    options = {
        "schedule": None,
        "base": "ipndm",
        "space": "logsnr",
        "window": 0.5,
        "relax": 1.0,
        **TRAINING_OPTIONS,
        "iterations": 250,
        "batch_size": 2,
        "lr": 5e-3,
        "train_size": 50,
    }
    choices = {"base": BASES, "space": SPACES, "loss": LOSSES}
    validation_size = 50

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        return self.initial_steps(teacher, nfe)

    def table_from(self, params, teacher, nfe: int) -> SolverTable:
        base = SOLVERS.get(self.config["base"])
        options = {k: v for k, v in base.options.items() if k != "schedule"}
        sigmas, evaluation = self.step_sigmas(params, teacher)
        return trace(evaluated_at, sigmas, base_loop=base.loop, eval_sigmas=evaluation, **options)

    def make_optimizer(self, params):
        return torch.optim.RMSprop(list(params.values()), lr=self.config["lr"])

    def start_radius(self, teacher, nfe: int) -> float:
        return self.config["relax"] * math.sqrt(1e-3 * math.prod(teacher.shape)) / nfe
