"""The Generalized Solver (GS) of GAS (Sec. 3.1, Eq. 13-20).

Three sets of parameters:

* theta, the time steps by the stick-breaking product (Eq. 14)
  t_n = (T - delta) * prod_{j<=n} sigmoid(theta_j) + delta, n = 1..N-1, with t_0 = T and
  t_N = delta (the teacher's sigma_max and sigma_min in its diffusion time), initialised to the
  ``schedule`` (time-uniform by default, as the paper);
* phi, additive corrections, initialised at zero, to the coefficients of every previous point
  and every previous denoiser output (Eq. 15-19), on top of the base solver's theoretical
  coefficients recomputed at the current time steps (DPM-Solver++(3M), "theoretical guidance");
* xi, offsets of the times at which the denoiser is evaluated (decoupling), not clamped.

So untrained GS *is* DPM-Solver++(3M) on the same steps. The corrections live in the executor's
basis (each point x_j and denoiser output D_j, GAS Eq. 13); the paper attaches the recent-velocity
corrections to the finite-difference derivative estimates instead (Eq. 17-19), a linear change of
basis of the same family. Ablations: ``guidance=false`` drops the base coefficients after
initialisation (Table 5: the base table at the initial steps is frozen into the trainable
coefficients instead of following the learned steps), ``decouple=false`` fixes xi = 0 (Table 5).
"""

from __future__ import annotations

import torch

from gasbench.registry import register_solver
from gasbench.solvers.executor import SolverTable, trace
from gasbench.solvers.handcrafted import dpmpp_3m
from gasbench.solvers.learned import TRAINING_OPTIONS, LearnedSolver
from gasbench.solvers.schedules import make_sigmas


def _inverse_stick_breaking(t: torch.Tensor, delta: float) -> torch.Tensor:
    """theta with t_n = (t_0 - delta) prod_{j<=n} sigmoid(theta_j) + delta for n = 1..len(t) - 2."""
    fractions = (t[1:-1] - delta) / (t[:-2] - delta)
    return torch.logit(fractions)


def stick_breaking_times(theta: torch.Tensor, t_max: float, delta: float) -> torch.Tensor:
    """Eq. 14: the N + 1 decreasing times T = t_0 > t_1 > ... > t_N = delta."""
    inner = (t_max - delta) * torch.cumprod(torch.sigmoid(theta), 0) + delta
    ends = theta.new_tensor
    return torch.cat([ends([t_max]), inner, ends([delta])])


@register_solver("gs", description="Generalized Solver (GAS Eq. 20): learned steps, decoupling and corrections to DPM-Solver++(3M)")
class GeneralizedSolver(LearnedSolver):
    name = "gs"
    options = {"schedule": "time-uniform", "guidance": True, "decouple": True, **TRAINING_OPTIONS}

    def _times(self, teacher) -> tuple[float, float]:
        return teacher.time.t(teacher.sigma_max), teacher.time.t(teacher.sigma_min)

    def init_parameters(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        t_max, delta = self._times(teacher)
        sigmas = make_sigmas(self.resolved_config(teacher)["schedule"], nfe, teacher)
        t = torch.tensor([teacher.time.t(float(s)) for s in sigmas], dtype=torch.float64)
        t[0], t[-1] = t_max, delta
        params = {
            "theta": _inverse_stick_breaking(t, delta),
            "a_hat": torch.zeros(nfe, nfe, dtype=torch.float64),
            "c_hat": torch.zeros(nfe, nfe, dtype=torch.float64),
            "xi": torch.zeros(nfe, dtype=torch.float64),
        }
        if not self.config["guidance"]:
            # no theoretical guidance: the base at the initial steps becomes the starting point of
            # the trained coefficients, which then no longer move with the time steps
            base = self._base(params["theta"], teacher)
            params["a_hat"], params["c_hat"] = base.a.clone(), base.c.clone()
        return params

    def _base(self, theta: torch.Tensor, teacher) -> SolverTable:
        t_max, delta = self._times(teacher)
        sigmas = teacher.time.sigma(stick_breaking_times(theta, t_max, delta))
        return trace(dpmpp_3m, sigmas)

    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> SolverTable:
        t_max, delta = self._times(teacher)
        times = stick_breaking_times(params["theta"], t_max, delta)
        lower = torch.tril(torch.ones(nfe, nfe, dtype=torch.float64))
        a, c = params["a_hat"] * lower, params["c_hat"] * lower
        if self.config["guidance"]:
            base = trace(dpmpp_3m, teacher.time.sigma(times))
            a, c = base.a + a, base.c + c
        eval_times = times[:-1] + params["xi"] if self.config["decouple"] else times[:-1]
        return SolverTable(a=a, c=c, sigmas=teacher.time.sigma(eval_times), sigma_final=float(teacher.time.sigma(times[-1:].detach())[0]))
