"""The network preconditionings of EDM Table 1: the one place their scalings are computed.

Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative Models"
(EDM, NeurIPS 2022), Eq. 7: D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)).
Each function returns (c_skip, c_out, c_in, c_noise) for a tensor ``sigma``, in its dtype and
shape, with the arithmetic of EDM's ``training/networks.py`` (``EDMPrecond``, ``VPPrecond``,
``VEPrecond``), so float32 callers get EDM's own float32 values. Users: the built-in teachers'
small UNet (:mod:`gasbench.teachers.networks`), EDM's released networks
(:mod:`gasbench.teachers.edm_networks`) and diffusers' EDM schedulers (:mod:`gasbench.teachers.time`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:  # the time module computes its EDM schedule with these scalings
    from gasbench.teachers.time import VPLinearTime

Scaling = Union[torch.Tensor, float]


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[Scaling, Scaling, Scaling, torch.Tensor]:
    """EDM's own row: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, sd = ``sigma_data``."""
    sd = sigma_data
    return (sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), 1 / (sd**2 + sigma**2).sqrt(),
            sigma.log() / 4)


def vp_scalings(sigma: torch.Tensor, time: VPLinearTime, M: int) -> tuple[Scaling, Scaling, Scaling, torch.Tensor]:
    """The VP row (Song et al., 2021): c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = (M - 1) t(sigma) in the VP-linear time ``time``."""
    return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * time.t(sigma)


def ve_scalings(sigma: torch.Tensor) -> tuple[Scaling, Scaling, Scaling, torch.Tensor]:
    """The VE row (Song et al., 2021): c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""
    return 1, sigma, 1, (0.5 * sigma).log()
