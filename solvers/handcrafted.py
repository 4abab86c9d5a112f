"""Handcrafted solvers, each a sampling loop in the EDM sigma-parameterisation.

x_sigma = x_0 + sigma * eps, the probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma
and lambda = -log(sigma) is the log-SNR. Every loop reads like its paper's update and is traced
into an Eq. 13 coefficient table by :func:`gasbench.solvers.executor.trace`.

Convention for "lower order final" (recorded in each result): with ``lower_order_final=True`` the
multistep solvers use order min(order, n + 1, N - n) at step n of N, the convention of the
official DPM-Solver++/UniPC code and of diffusers below 15 steps. A step to sigma = 0 is always
first order (h is infinite there).

Schedule: without ``--schedule`` each solver runs on the one its own paper uses for a teacher like
the one at hand (``paper_schedule``, :class:`~gasbench.solvers.schedules.PaperSchedule`), named in
its docstring; ``gasbench run --schedule tuned`` picks it on validation trajectories instead.
"""

from __future__ import annotations

import torch

from gasbench.solvers.base import handcrafted_solver
from gasbench.solvers.schedules import DDIM_SCHEDULE, DEIS_SCHEDULE, DPM_SOLVER_SCHEDULE


def step_order(order: int, n: int, steps: int, lower_order_final: bool) -> int:
    """Order usable at step n: warm-up from the available history, lower at the end if asked."""
    usable = min(order, n + 1)
    if lower_order_final:
        usable = min(usable, steps - n)
    return usable


def to_d(x, sigma, denoised):
    """The ODE direction dx/dsigma = (x - D) / sigma (Karras et al., 2022, Eq. 3)."""
    return (x - denoised) / sigma


@handcrafted_solver("euler", aliases=("ddim",), paper_schedule=DDIM_SCHEDULE)
def euler(model, x, sigmas):
    """Euler / DDIM (first order). Song et al. (2021) DDIM = Karras et al. (2022) Alg. 1 Euler.

    Schedule: DDIM's, App. D.2: time-quadratic on pixel teachers up to 32x32, else time-uniform.
    """
    for n in range(len(sigmas) - 1):
        denoised = model(x, sigmas[n])
        x = x + (sigmas[n + 1] - sigmas[n]) * to_d(x, sigmas[n], denoised)
    return x


@handcrafted_solver("heun", evals_per_step=2, paper_schedule="edm")
def heun(model, x, sigmas):
    """Heun's 2nd-order method, two evaluations per step. Karras et al. (2022), arXiv:2206.00364, Alg. 1.

    Schedule: EDM's, rho = 7 (Eq. 5), on every teacher.
    """
    for n in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[n], sigmas[n + 1]
        d = to_d(x, sigma, model(x, sigma))
        x_euler = x + (sigma_next - sigma) * d
        d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_next))
        x = x + (sigma_next - sigma) * (d + d_next) / 2
    return x


def dpmpp_update(x, sigma_hist, denoised_hist, sigma_next):
    """One DPM-Solver++ multistep update of order len(denoised_hist) in {1, 2, 3}.

    Lu et al. (2022b), arXiv:2211.01095, Alg. 2 (2M); the 3M form is GAS Alg. 1 with zero
    corrections. Histories are oldest first and end at the current point.
    """
    order = len(denoised_hist)
    s0, m0 = sigma_hist[-1], denoised_hist[-1]
    if sigma_next == 0:
        return m0
    h = torch.log(s0 / sigma_next)
    phi_1 = torch.expm1(-h)
    x_next = (sigma_next / s0) * x - phi_1 * m0
    if order == 1:
        return x_next
    r0 = torch.log(sigma_hist[-2] / s0) / h
    d1_0 = (m0 - denoised_hist[-2]) / r0
    if order == 2:
        return x_next - 0.5 * phi_1 * d1_0
    r1 = torch.log(sigma_hist[-3] / sigma_hist[-2]) / h
    d1_1 = (denoised_hist[-2] - denoised_hist[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    return x_next + phi_2 * d1 - phi_3 * d2


def _dpmpp_multistep(model, x, sigmas, order, lower_order_final):
    steps = len(sigmas) - 1
    denoised = []
    for n in range(steps):
        denoised.append(model(x, sigmas[n]))
        k = step_order(order, n, steps, lower_order_final)
        x = dpmpp_update(x, sigmas[n - k + 1 : n + 1], denoised[-k:], sigmas[n + 1])
    return x


@handcrafted_solver("dpmpp2m", aliases=("dpm-solver++2m", "dpmpp-2m"), paper_schedule=DPM_SOLVER_SCHEDULE)
def dpmpp_2m(model, x, sigmas, *, lower_order_final: bool = True):
    """DPM-Solver++(2M), data prediction. Lu et al. (2022b), arXiv:2211.01095, Alg. 2.

    Schedule: DPM-Solver's: logSNR on unguided pixel teachers up to 64x64, else time-uniform.
    """
    return _dpmpp_multistep(model, x, sigmas, 2, lower_order_final)


@handcrafted_solver("dpmpp3m", aliases=("dpm-solver++3m", "dpmpp-3m"), paper_schedule=DPM_SOLVER_SCHEDULE)
def dpmpp_3m(model, x, sigmas, *, lower_order_final: bool = True):
    """DPM-Solver++(3M), data prediction. Lu et al. (2022b), arXiv:2211.01095, Sec. 3.3.

    Schedule: DPM-Solver's: logSNR on unguided pixel teachers up to 64x64, else time-uniform.
    """
    return _dpmpp_multistep(model, x, sigmas, 3, lower_order_final)


def unipc_update(x, sigma_hist, denoised_hist, sigma_next, variant, denoised_next=None):
    """UniP (predictor) or, given ``denoised_next``, UniC (corrector) of data-prediction UniPC.

    Zhao et al. (2023), arXiv:2302.04867, Alg. 2 (UniP-p) and Alg. 1 (UniC-p) with B(h) = h
    ("bh1") or e^h - 1 ("bh2"). The predictor's order is len(denoised_hist); the corrector adds
    the fresh output at sigma_next and gains one order. As in the official code, order-2
    prediction uses rho = 1/2 and order-1 correction rho = 1/2.
    """
    order = len(denoised_hist)
    s0, m0 = sigma_hist[-1], denoised_hist[-1]
    if sigma_next == 0:
        return m0
    h = torch.log(s0 / sigma_next)
    hh = -h  # data prediction integrates in -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rks, d1s = [], []
    for i in range(1, order):
        rk = torch.log(s0 / sigma_hist[-1 - i]) / h
        rks.append(rk)
        d1s.append((denoised_hist[-1 - i] - m0) / rk)
    rks.append(torch.ones_like(h))
    rks = torch.stack(rks)
    rows, b = [], []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.stack(rows), torch.stack(b)
    x_next = (sigma_next / s0) * x - h_phi_1 * m0
    if denoised_next is None:
        if order == 1:
            return x_next
        rhos = torch.full_like(b[:1], 0.5) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        terms = list(zip(rhos, d1s))
    else:
        rhos = torch.full_like(b[:1], 0.5) if order == 1 else torch.linalg.solve(R, b)
        terms = list(zip(rhos[:-1], d1s)) + [(rhos[-1], denoised_next - m0)]
    correction = terms[0][0] * terms[0][1]
    for rho, d in terms[1:]:
        correction = correction + rho * d
    return x_next - b_h * correction


def _unipc(model, x, sigmas, order, variant, lower_order_final):
    steps = len(sigmas) - 1
    denoised, x_prev, prev_order = [], None, 0
    for n in range(steps):
        d = model(x, sigmas[n])
        if n > 0:  # UniC reuses this evaluation to correct x_n: no extra NFE
            k = prev_order
            x = unipc_update(
                x_prev, sigmas[n - k : n], denoised[-k:], sigmas[n], variant, denoised_next=d
            )
        denoised.append(d)
        prev_order = step_order(order, n, steps, lower_order_final)
        x_prev = x
        k = prev_order
        x = unipc_update(x, sigmas[n - k + 1 : n + 1], denoised[-k:], sigmas[n + 1], variant)
    return x


@handcrafted_solver("unipc", aliases=("unipc-bh1",), choices={"order": (1, 2, 3)}, paper_schedule=DPM_SOLVER_SCHEDULE)
def unipc_bh1(model, x, sigmas, *, order: int = 3, lower_order_final: bool = True):
    """UniPC with B(h) = h (bh1), orders 1-3. Zhao et al. (2023), arXiv:2302.04867, Alg. 1-2.

    Schedule: DPM-Solver++'s, which UniPC follows (GAS Table 17's UniPC teachers alike): logSNR on
    unguided pixel teachers up to 64x64, else time-uniform.
    """
    return _unipc(model, x, sigmas, order, "bh1", lower_order_final)


@handcrafted_solver("unipc-bh2", choices={"order": (1, 2, 3)}, paper_schedule=DPM_SOLVER_SCHEDULE)
def unipc_bh2(model, x, sigmas, *, order: int = 3, lower_order_final: bool = True):
    """UniPC with B(h) = e^h - 1 (bh2), orders 1-3. Zhao et al. (2023), arXiv:2302.04867, Alg. 1-2.

    Schedule: as ``unipc``'s.
    """
    return _unipc(model, x, sigmas, order, "bh2", lower_order_final)


# Adams-Bashforth weights on the newest-first history of directions (iPNDM uses these
# fixed-step weights whatever the step sizes).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@handcrafted_solver("ipndm", choices={"order": (1, 2, 3, 4)}, paper_schedule=DEIS_SCHEDULE)
def ipndm(model, x, sigmas, *, order: int = 4):
    """iPNDM: Adams-Bashforth on dx/dsigma with lower-order warm start, orders 1-4.

    Zhang & Chen (2023), DEIS, arXiv:2204.13902, Sec. 4 / Eq. (iPNDM). Schedule: DEIS's time-quadratic
    on pixel teachers up to 64x64, time-uniform on the others (DLMS Sec. 4.4).
    """
    directions = []
    for n in range(len(sigmas) - 1):
        directions.append(to_d(x, sigmas[n], model(x, sigmas[n])))
        weights = ADAMS_BASHFORTH[min(order, n + 1)]
        slope = sum((w * d for w, d in zip(weights, reversed(directions))), start=0 * directions[-1])
        x = x + (sigmas[n + 1] - sigmas[n]) * slope
    return x
