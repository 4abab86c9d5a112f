"""Our DPM-Solver++ and UniPC against diffusers' schedulers on the same denoiser and time steps."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from gasbench.core.registry import SOLVERS
from gasbench.solvers.executor import execute

SCHEDULER_SETTINGS = {
    "dpmpp2m": (DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="dpmsolver++")),
    "dpmpp3m": (DPMSolverMultistepScheduler, dict(solver_order=3, algorithm_type="dpmsolver++")),
    "unipc": (UniPCMultistepScheduler, dict(solver_type="bh1", predict_x0=True)),
    "unipc-bh2": (UniPCMultistepScheduler, dict(solver_type="bh2", predict_x0=True)),
}


def run_diffusers(scheduler, teacher, x_T, steps):
    """Drive a diffusers scheduler in VP space with the EDM denoiser converted to x0-prediction."""
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.to(torch.float64)
    alpha = lambda s: 1 / torch.sqrt(1 + s**2)  # noqa: E731
    sample = x_T * alpha(sigmas[0])
    for i, t in enumerate(scheduler.timesteps):
        x0 = teacher.denoise(sample / alpha(sigmas[i]), sigmas[i], None)
        sample = scheduler.step(x0, t, sample).prev_sample
    return sample / alpha(sigmas[-1]), sigmas


# (method, order, final sigma): DPM-Solver++ ends at sigma_min or exactly 0; diffusers' UniPC
# divides by log(0) when asked to end at 0 in VP space, so it is compared at sigma_min only.
CASES = [(m, 3, final) for m in ("dpmpp2m", "dpmpp3m") for final in ("sigma_min", "zero")] + [
    (m, order, "sigma_min") for m in ("unipc", "unipc-bh2") for order in (1, 2, 3)
]


@pytest.mark.parametrize("method,order,final", CASES)
@pytest.mark.parametrize("steps", [4, 5, 10])
def test_matches_diffusers(gmm_teacher, method, order, final, steps):
    cls, settings = SCHEDULER_SETTINGS[method]
    options = {}
    if method.startswith("unipc"):
        settings = {**settings, "solver_order": order}
        options = {"order": order}
    scheduler = cls(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="sample",
        lower_order_final=True,
        final_sigmas_type=final,
        **settings,
    )
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(8, *gmm_teacher.shape, generator=g, dtype=torch.float64)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.to(torch.float64)
    x_T = noise * sigmas[0]
    expected, _ = run_diffusers(scheduler, gmm_teacher, x_T, steps)

    solver = SOLVERS.get(method)(**options)
    table = solver_table(solver, sigmas)
    ours = execute(table, gmm_teacher.denoiser(None), x_T)
    assert table.nfe == steps
    rel = (ours - expected).norm() / expected.norm()
    assert rel < 1e-4, f"{method} order {order}: relative difference {rel:.2e}"


def solver_table(solver, sigmas):
    from gasbench.solvers.executor import trace

    return trace(type(solver).loop, sigmas, **{k: v for k, v in solver.config.items() if k != "schedule"})
