"""Metrics as registered plugins; each declares whether higher is better.

The first family compares a method's samples with the teacher's own solution from the same
noise and condition: RMSE in the sample space (pixels in [-1, 1], or latents) and PSNR on the
decoded images in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gasbench.registry import METRICS, register_metric


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    compute: Callable[[torch.Tensor, torch.Tensor, object], float]
    description: str


def metric(name: str, higher_is_better: bool, description: str):
    def wrap(fn):
        register_metric(name, description=description)(Metric(name, higher_is_better, fn, description))
        return fn

    return wrap


@metric("rmse", higher_is_better=False, description="Root mean squared distance to the teacher's sample from the same noise (sample space)")
def rmse(samples: torch.Tensor, reference: torch.Tensor, teacher) -> float:
    return float((samples.double() - reference.double()).pow(2).mean().sqrt())


@metric("psnr", higher_is_better=True, description="PSNR (dB) of decoded images against the teacher's decoded sample from the same noise")
def psnr(samples: torch.Tensor, reference: torch.Tensor, teacher) -> float:
    a, b = teacher.decode(samples).double(), teacher.decode(reference).double()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def get_metric(name: str) -> Metric:
    return METRICS.get(name)
