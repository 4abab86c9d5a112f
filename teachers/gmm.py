"""An analytic teacher: isotropic Gaussian mixture data, whose denoiser is exact.

For p(x_0) = sum_k pi_k N(mu_k, s^2 I) and x = x_0 + sigma * eps, the ideal denoiser is

    D(x, sigma) = sum_k w_k(x) (mu_k + s^2 / (s^2 + sigma^2) (x - mu_k)),
    w_k(x) proportional to pi_k N(x; mu_k, (s^2 + sigma^2) I),

so the probability-flow ODE is known exactly and solver errors are pure discretisation errors.
The registered ``gmm`` teacher uses the ten class means of scikit-learn's 8x8 digits as means.
"""

from __future__ import annotations

from typing import Optional

import torch

from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, Teacher
from gasbench.teachers.protocol import EvaluationProtocol


class GaussianMixtureTeacher(Teacher):
    """Exact denoiser of an isotropic Gaussian mixture with equal weights."""

    name = "gmm"
    reference = ReferenceSolver("unipc", 50, "logsnr", {"order": 3})
    protocol = EvaluationProtocol(samples=1000, full_reference_set=False)
    default_budget = "cpu"
    domain_space = "pixels"
    # exact draws from the mixture that stand for its real images
    REAL_DRAWS = 2000

    def __init__(self, means: torch.Tensor, std: float):
        self.means = means.to(torch.float64)
        self.std = float(std)
        self.shape = tuple(means.shape[1:])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        x64 = x.to(torch.float64).flatten(1)
        mu = self.means.flatten(1).to(x.device)  # the means stay on the CPU for sample_data
        # (1, 1) for one sigma, (B, 1) for one per sample
        var = self.std**2 + torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
        logits = -torch.cdist(x64, mu).pow(2) / (2 * var)
        weights = torch.softmax(logits, dim=1)
        shrink = self.std**2 / var
        posterior = (1 - shrink) * (weights @ mu) + shrink * x64
        return posterior.view(x.shape).to(x.dtype)

    def sample_data(self, count: int, seed: int = 0) -> torch.Tensor:
        """Exact draws from the mixture (components uniform), float64 (count, *shape)."""
        generator = torch.Generator().manual_seed(seed)
        component = torch.randint(len(self.means), (count,), generator=generator)
        noise = torch.randn((count, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[component] + self.std * noise

    def real_images(self) -> tuple[torch.Tensor, str]:
        """Exact mixture draws (seed 0) as the 'real images' of distribution metrics."""
        return self.decode(self.sample_data(self.REAL_DRAWS)), f"{self.REAL_DRAWS} exact draws from the mixture, seed 0"

    def exact_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact ODE flow for a single Gaussian: x - mu scales by sqrt((s^2 + sigma^2))."""
        if self.means.shape[0] != 1:
            raise ValueError("the flow has a closed form only for a single Gaussian")
        mu = self.means.to(x.dtype)
        scale = ((self.std**2 + sigma_to**2) / (self.std**2 + sigma_from**2)) ** 0.5
        return mu + scale * (x - mu)


@register_teacher("gmm", description="Analytic Gaussian mixture on the 10 digit class means (8x8); exact denoiser")
def gmm_teacher() -> GaussianMixtureTeacher:
    from gasbench.teachers.datasets import load_digits_tensor

    images, labels = load_digits_tensor()
    means = torch.stack([images[labels == k].mean(0) for k in range(10)])
    return GaussianMixtureTeacher(means.to(torch.float64), std=0.2)
