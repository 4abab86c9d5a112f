"""LD3-style learned time steps (Tong et al., 2024, "Learning to Discretize Denoising Diffusion
ODEs"; S4S Appendix E restates the parametrisation) on a handcrafted base solver.

Only the time steps are learned, plus a decoupled copy of them for the network:

* steps: unconstrained logits -> softmax -> cumulative sum -> rescaled between the fixed
  endpoints (S4S Eq. E.1), in diffusion time t (``space=time``, the teacher's VP-linear time) or
  in log-SNR lambda = -log sigma (``space=logsnr``), so they stay strictly monotone whatever the
  logits become. The logits start at the log of the ``schedule``'s gaps, so the untrained
  solver *is* the base solver on that schedule;
* decoupling (S4S Eq. E.2): the denoiser is evaluated at step i shifted by an offset clipped to
  +/- ``window`` x the smallest gap between neighbouring *logits* (``window_from=logits``, the
  official code in its logSNR mode, trainer.py:617-618) or between neighbouring steps
  (``window_from=steps``, its time mode, trainer.py:602, and S4S Eq. E.2), the bound held
  constant in the gradient (``.item()`` there); the first point (x_T) is not shifted and the last
  is never evaluated;
* the base (``base``: iPNDM, DPM-Solver++(2M/3M), UniPC) is the registered handcrafted loop, at
  ``order`` where it has one, traced at the learned steps into the one executor's table,
  evaluating at the decoupled ones. The official configs use UniPC bh1 of order 3 on the pixel
  teachers (configs/cifar10.yml:4-7), bh2 on the latent ones.

Objective: the soft teacher (LD3 Eq. 9, the relaxed objective S4S Eq. 7 borrows): the student
may start anywhere in an L2 ball around the teacher's unit noise of radius
1e-3 x C x H x W / N^2 (official utils.py:201, ``relax`` scales it, 0 gives the exact
objective). Each iteration the batch's start points take an SGD step of lr 12 / N
(utils.py:199) on the batch's mean loss, are projected onto the ball, and a pair keeps its new
start point only if its loss there, under the updated steps, is below its loss before the
iteration (trainer.py:475-489, 520-528; ``start_update=sgd-keep-if-better``;
``normalised-step`` is the shared rule of :meth:`LearnedSolver.move_start_offsets`).

Budget: the official one, 50 training and 50 validation pairs, batch 2, RMSprop at lr 5e-3 with
momentum 0.9 on the logits (trainer.py:154-159, configs/cifar10.yml:18-29) and SGD at
``offset_lr`` / N on the offsets (trainer.py:160-162, utils.py:202; ``offset_optimizer=rmsprop``
puts them in the RMSprop); the official code trains the offsets only after two of its seven
rounds, here from the start. Loss: LD3's LPIPS is ``loss=lpips-vgg``
(:meth:`LD3.paper_budget`); the built-in 8x8 teachers default to L1 like every learned method
here (see gasbench.solvers.learned).
"""

from __future__ import annotations

import math

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS, register_solver
from gasbench.solvers.executor import SolverTable, per_sample, trace
from gasbench.solvers.learned import LOSSES, TRAINING_OPTIONS, LearnedSolver, distillation_loss, project_to_ball
from gasbench.solvers.schedules import make_sigmas

SPACES = ("time", "logsnr")
GAP_EPS = 1e-5  # every gap keeps at least this fraction of the range, as GS's stick-breaking portions
BASES = ("ipndm", "dpmpp2m", "dpmpp3m", "unipc", "unipc-bh2")
WINDOWS_FROM = ("logits", "steps")
START_UPDATES = ("sgd-keep-if-better", "normalised-step")
START_LR = 12.0  # official shift_lr = 3 * 4 / N (utils.py:199), divided by N below
OFFSET_OPTIMIZERS = ("sgd", "rmsprop")


def start_radius_ld3(teacher, nfe: int) -> float:
    """LD3's start-point radius in unit-noise L2 norm: 1e-3 x C x H x W / N^2 (utils.py:201)."""
    return 1e-3 * math.prod(teacher.shape) / nfe**2


def learned_step_count(nfe: int) -> int:
    """LD3's learned scalars at N = ``nfe`` steps: N gap logits and N - 1 decoupling offsets."""
    return 2 * nfe - 1


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


def decoupling_bound(logits: torch.Tensor, points: torch.Tensor, window: float, window_from: str) -> float:
    """The offsets' bound: ``window`` x the smallest gap between neighbouring logits or points
    (see the module docstring), a constant in the gradient as the official ``.item()``. The
    official logit vector has one more entry in front, inert in the steps (the min-max rescale
    cancels it) and so fixed at its initial 1, whose gap to the next one counts too; ours has none."""
    values = logits if window_from == "logits" else points
    if len(values) < 2:  # one step: no offsets to bound
        return 0.0
    return window * float((values[1:] - values[:-1]).abs().min().detach())


def decoupled_points(points: torch.Tensor, offsets: torch.Tensor, bound: float) -> torch.Tensor:
    """S4S Eq. E.2: the N evaluation points, point i shifted by its offset clipped to
    +/- ``bound``; point 0 (x_T) stays where it is."""
    return torch.cat([points[:1], points[1:-1] + torch.clamp(offsets, -bound, bound)])


def pair_losses(name: str, student: torch.Tensor, target: torch.Tensor, teacher) -> torch.Tensor:
    """The distillation loss of each pair (B,); their mean is the batch's loss."""
    return torch.stack([distillation_loss(name, s[None], t[None], teacher) for s, t in zip(student, target)])


def evaluated_at(model, x, sigmas, *, base_loop, eval_sigmas, **options):
    """Run a handcrafted ``base_loop`` on ``sigmas`` whose k-th denoiser call is made at
    ``eval_sigmas[k]`` instead (each of these loops evaluates once per step, at the step)."""
    calls = iter(eval_sigmas)
    return base_loop(lambda y, _sigma: model(y, next(calls)), x, sigmas, **options)


class PairedOptimizer:
    """Two optimisers over disjoint parameters, stepped, zeroed and checkpointed as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)


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
        bound = decoupling_bound(params["logits"], points, self.config["window"], self.config["window_from"])
        evaluation = decoupled_points(points, params["offsets"], bound)
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
        "base": "unipc",
        "order": 3,
        "space": "logsnr",
        "window": 0.5,
        "window_from": "logits",
        "relax": 1.0,
        "start_update": "sgd-keep-if-better",
        "momentum": 0.9,
        "offset_optimizer": "sgd",
        "offset_lr": 0.1,
        **TRAINING_OPTIONS,
        "iterations": 250,
        "batch_size": 2,
        "lr": 5e-3,
        "train_size": 50,
    }
    choices = {"base": BASES, "space": SPACES, "window_from": WINDOWS_FROM, "start_update": START_UPDATES,
               "offset_optimizer": OFFSET_OPTIMIZERS, "loss": LOSSES}
    validation_size = 50

    def __init__(self, **options):
        super().__init__(**options)
        self.losses_before: torch.Tensor | None = None  # each pair's loss before this iteration's update
        orders = SOLVERS.get(self.config["base"]).choices.get("order")
        if orders is not None and self.config["order"] not in orders:
            raise GasbenchError(f"ld3 with base={self.config['base']} supports order in {list(orders)}, "
                                f"got {self.config['order']}.")

    @classmethod
    def paper_budget(cls, teacher) -> dict:
        """The official configs: pixel teachers configs/cifar10.yml (ffhq.yml, afhqv2.yml alike):
        UniPC bh1 order 3 in lambda (:4-8), LPIPS, batch 2, 50 + 50 pairs, 2 + 5 rounds of
        25 iterations (:17-23); latent ones configs/latent_diff_LSUN.yml (latent_diff_imn.yml
        alike): bh2 order 3 in time (:5-14), batch 1, 2 + 3 rounds of 50; Stable Diffusion
        configs/stable_diff_v1-5.yml: bh2 order 2 (:5-8), 25 + 25 pairs (:26-27), 5 rounds of 25;
        offsets' SGD at 0.1 / N on pixels, 0.001 / N on latents (lr_time_2, :26 / :32). The steps
        start uniform in the learned space (trainer.py:225, all-ones logits)."""
        common = {"loss": "lpips-vgg", "lr": 5e-3, "momentum": 0.9, "offset_optimizer": "sgd", "window": 0.5,
                  "relax": 1.0, "start_update": "sgd-keep-if-better", "grad_clip": 1.0}
        if teacher.modality == "pixel":
            return {**common, "base": "unipc", "order": 3, "space": "logsnr", "schedule": "logsnr", "offset_lr": 0.1,
                    "window_from": "logits", "batch_size": 2, "train_size": 50, "iterations": 7 * 25}
        pairs = 25 if teacher.modality == "text" else 50
        return {**common, "base": "unipc-bh2", "order": 2 if teacher.modality == "text" else 3, "space": "time",
                "schedule": "time-uniform", "offset_lr": 0.001, "window_from": "steps", "batch_size": 1,
                "train_size": pairs, "iterations": 5 * pairs}

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        return self.initial_steps(teacher, nfe)

    def table_from(self, params, teacher, nfe: int) -> SolverTable:
        base = SOLVERS.get(self.config["base"])
        options = {k: v for k, v in base.options.items() if k != "schedule"}
        if "order" in options:
            options["order"] = self.config["order"]
        sigmas, evaluation = self.step_sigmas(params, teacher)
        return trace(evaluated_at, sigmas, base_loop=base.loop, eval_sigmas=evaluation, **options)

    def make_optimizer(self, params):
        """RMSprop with momentum on the logits, SGD at ``offset_lr`` / N on the offsets (module docstring)."""
        cfg = self.config
        if cfg["offset_optimizer"] == "rmsprop":
            return torch.optim.RMSprop(list(params.values()), lr=cfg["lr"], momentum=cfg["momentum"])
        return PairedOptimizer(torch.optim.RMSprop([params["logits"]], lr=cfg["lr"], momentum=cfg["momentum"]),
                               torch.optim.SGD([params["offsets"]], lr=cfg["offset_lr"] / len(params["logits"])))

    def start_radius(self, teacher, nfe: int) -> float:
        return self.config["relax"] * start_radius_ld3(teacher, nfe)

    def passes_per_iteration(self, nfe: int) -> int:
        """The shared count, plus the forward solve of the batch from its candidate start points."""
        resolve = self.config["relax"] > 0 and self.config["start_update"] == "sgd-keep-if-better"
        return super().passes_per_iteration(nfe) * (3 if resolve else 2) // 2

    def training_loss(self, params, teacher, nfe, batch, generator, checkpointing=False):
        """The batch's mean loss; under LD3's start-point rule each pair's loss is kept too, for
        the comparison after the update."""
        if self.config["start_update"] != "sgd-keep-if-better":
            return super().training_loss(params, teacher, nfe, batch, generator, checkpointing)
        student = self.solve(params, teacher, nfe, batch["noise"], batch.get("cond"), checkpointing)
        losses = pair_losses(self.config["loss"], student, batch["x0"], teacher)
        self.losses_before = losses.detach()
        return losses.mean()

    def move_start_offsets(self, params, teacher, nfe, batch, shift):
        """LD3's rule (module docstring): SGD step, projection, kept where the pair's loss drops."""
        if self.config["start_update"] != "sgd-keep-if-better":
            return super().move_start_offsets(params, teacher, nfe, batch, shift)
        start = shift.detach()
        candidate = project_to_ball(start - START_LR / nfe * shift.grad, self.start_radius(teacher, nfe))
        with torch.no_grad():  # batch["noise"] holds noise + start
            student = self.solve(params, teacher, nfe, batch["noise"] + (candidate - start), batch.get("cond"))
            after = pair_losses(self.config["loss"], student, batch["x0"], teacher)
        return torch.where(per_sample(after < self.losses_before, start), candidate, start)
