"""A gasbench solver plugin in one module: DPM-Solver++(2S), a single-step second-order solver.

Use it without installing anything::

    gasbench run --plugin examples/dpmpp2s_plugin/gasbench_dpmpp2s.py --methods dpmpp2s,dpmpp2m

or install this folder (``pip install ./examples/dpmpp2s_plugin``): its pyproject declares the
module under the ``gasbench.solvers`` entry-point group, so ``gasbench list`` finds it by itself.
"""

import torch

from gasbench.solvers.base import handcrafted_solver


@handcrafted_solver("dpmpp2s", evals_per_step=2)
def dpmpp_2s(model, x, sigmas, *, r: float = 0.5):
    """DPM-Solver++(2S), single-step, two evaluations per step. Lu et al. (2022b), arXiv:2211.01095, Alg. 1."""
    for n in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[n], sigmas[n + 1]
        h = torch.log(sigma / sigma_next)
        sigma_mid = sigma * torch.exp(-r * h)
        denoised = model(x, sigma)
        x_mid = (sigma_mid / sigma) * x - torch.expm1(-r * h) * denoised
        denoised_mid = model(x_mid, sigma_mid)
        blended = (1 - 1 / (2 * r)) * denoised + (1 / (2 * r)) * denoised_mid
        x = (sigma_next / sigma) * x - torch.expm1(-h) * blended
    return x
