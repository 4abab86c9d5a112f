"""Convergence orders of the handcrafted solvers on an analytic teacher with an exact ODE flow.

Global orders are what a user sees: multistep methods start with lower-order steps, and a
first-order exponential-integrator step has local error O(h^2), so DPM-Solver++(3M) and iPNDM
are globally second order; UniPC's corrector raises the start to second order, hence third order
for UniPC-2/3. The local test checks each multistep formula's own order p (local error h^(p+1)).
"""

import math

import numpy as np
import pytest
import torch

from gasbench.solvers import handcrafted as H
from gasbench.solvers.executor import execute, trace
from gasbench.teachers.gmm import GaussianMixtureTeacher

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


@pytest.fixture
def gaussian():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64) * 0.8
    return GaussianMixtureTeacher(mu, std=0.25)


def logsnr_grid(steps, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN):
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), steps + 1, dtype=torch.float64)
    return torch.exp(-lam)


def fitted_order(errors, steps):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


GLOBAL_ORDERS = [
    (H.euler, {}, 1),
    (H.heun, {}, 2),
    (H.dpmpp_2m, {"lower_order_final": False}, 2),
    (H.dpmpp_3m, {"lower_order_final": False}, 2),
    (H.unipc_bh1, {"order": 1, "lower_order_final": False}, 2),
    (H.unipc_bh1, {"order": 2, "lower_order_final": False}, 3),
    (H.unipc_bh2, {"order": 2, "lower_order_final": False}, 3),
    (H.ipndm, {"order": 2}, 2),
    (H.ipndm, {"order": 4}, 2),
]


@pytest.mark.parametrize("loop,options,order", GLOBAL_ORDERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_global_order(gaussian, loop, options, order):
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(4, *gaussian.shape, generator=g, dtype=torch.float64) * SIGMA_MAX
    exact = gaussian.exact_solution(x_T, SIGMA_MAX, SIGMA_MIN)
    steps = [16, 32, 64, 128]
    errors = [
        (execute(trace(loop, logsnr_grid(n), **options), gaussian.denoiser(None), x_T) - exact).norm().item()
        for n in steps
    ]
    assert errors[-1] < errors[0]
    assert abs(fitted_order(errors, steps) - order) < 0.35, errors


def unipc_bh1(*args):
    return H.unipc_update(*args, variant="bh1")


def unipc_bh2(*args):
    return H.unipc_update(*args, variant="bh2")


# (update, history length p, exponent of the local error). DPM-Solver++(3M) as published (Lu et
# al. 2022b; GAS Alg. 1; diffusers) weights the second difference D2 ~ h^2 x0''/2 by phi_3 where
# the Taylor expansion of the exact integral needs 2 phi_3, so its local error is O(h^3), the
# same order as 2M with a smaller constant. We keep the published weights (parity with diffusers
# and GAS) and pin the order we measure.
LOCAL_ORDERS = [
    (H.dpmpp_update, 1, 2),
    (H.dpmpp_update, 2, 3),
    (H.dpmpp_update, 3, 3),
    (unipc_bh1, 2, 3),
    (unipc_bh1, 3, 4),
    (unipc_bh2, 3, 4),
]


@pytest.mark.parametrize("update,history,exponent", LOCAL_ORDERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_local_order(gaussian, update, history, exponent):
    """One step from an exact history of p points: error ~ h^exponent."""
    g = torch.Generator().manual_seed(2)
    sigma_start = 2.0
    x_start = torch.randn(2, *gaussian.shape, generator=g, dtype=torch.float64) * sigma_start
    errors, hs = [], [0.2, 0.1, 0.05, 0.025]
    for h in hs:
        sigmas = [sigma_start * math.exp(-k * h) for k in range(history + 1)]
        xs = [gaussian.exact_solution(x_start, sigma_start, s) for s in sigmas]
        denoised = [gaussian.denoise(x, torch.tensor(s), None) for x, s in zip(xs[:-1], sigmas)]
        sigma_hist = torch.tensor(sigmas[:-1], dtype=torch.float64)
        step = update(xs[-2], sigma_hist, denoised, torch.tensor(sigmas[-1], dtype=torch.float64))
        errors.append((step - xs[-1]).norm().item())
    assert abs(fitted_order(errors, [1 / h for h in hs]) - exponent) < 0.3, errors


def test_executor_reports_trajectory_and_counts_calls(gaussian):
    table = trace(H.dpmpp_3m, logsnr_grid(5))
    seen, calls = [], []

    def denoiser(x, sigma):
        calls.append(float(sigma))
        return gaussian.denoise(x, sigma, None)

    x_T = torch.ones(2, *gaussian.shape, dtype=torch.float64) * SIGMA_MAX
    out, trajectory = execute(table, denoiser, x_T, callback=seen.append, return_trajectory=True)
    assert len(calls) == table.nfe == 5 and len(seen) == 5 and len(trajectory) == 6
    assert calls == [float(s) for s in logsnr_grid(5)[:-1]]
    assert torch.equal(trajectory[-1], out) and torch.equal(trajectory[0], x_T)
