"""Time-step schedules: functions of (number of steps, teacher) -> descending sigmas.

Every schedule returns ``steps + 1`` noise levels from the teacher's sigma_max down to its
sigma_min, as a float64 tensor. Time-based schedules (time-uniform, time-quadratic, GITS) are
defined in the teacher's diffusion time t (``teacher.time``, the VP-linear time by default) and
mapped to sigma; the others live directly in sigma or log-sigma. Definitions follow GAS
Appendix D.1 (Eqs. 23-24) and EDM (Karras et al., 2022, Eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SCHEDULES, register_schedule


def _time_polynomial(steps: int, teacher, rho: float) -> torch.Tensor:
    t_eps, t_max = teacher.time.t(teacher.sigma_min), teacher.time.t(teacher.sigma_max)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return teacher.time.sigma(u**rho * (t_max - t_eps) + t_eps)


@register_schedule("time-uniform", aliases=("uniform",))
def time_uniform(steps: int, teacher) -> torch.Tensor:
    """Uniform in diffusion time t (GAS Eq. 23 with rho = 1)."""
    return _time_polynomial(steps, teacher, 1.0)


@register_schedule("time-quadratic", aliases=("quadratic",))
def time_quadratic(steps: int, teacher) -> torch.Tensor:
    """Quadratic in diffusion time t, denser near the data (GAS Eq. 23 with rho = 2)."""
    return _time_polynomial(steps, teacher, 2.0)


@register_schedule("logsnr", aliases=("logSNR", "log-snr"))
def logsnr(steps: int, teacher) -> torch.Tensor:
    """Uniform in log-SNR lambda = -log sigma (GAS Eq. 24)."""
    lam = torch.linspace(
        -torch.log(torch.tensor(teacher.sigma_max, dtype=torch.float64)).item(),
        -torch.log(torch.tensor(teacher.sigma_min, dtype=torch.float64)).item(),
        steps + 1,
        dtype=torch.float64,
    )
    return torch.exp(-lam)


@register_schedule("edm", aliases=("karras", "polynomial"))
def edm(steps: int, teacher, rho: float = 7.0) -> torch.Tensor:
    """EDM polynomial in sigma^(1/rho), rho = 7 (Karras et al., 2022, Eq. 5)."""
    i = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    lo, hi = teacher.sigma_min ** (1 / rho), teacher.sigma_max ** (1 / rho)
    return (hi + i * (lo - hi)) ** rho


# GITS time steps for Stable Diffusion as listed in GAS Appendix D.1 (from LD3), indexed by
# number of steps, in normalised time [0.001, 1].
GITS_TIMES = {
    4: [1, 0.6837, 0.3673, 0.1176, 0.001],
    5: [1, 0.7669, 0.4839, 0.2341, 0.0676, 0.001],
    6: [1, 0.7836, 0.5504, 0.3340, 0.1508, 0.0343, 0.001],
    7: [1, 0.8502, 0.6004, 0.4006, 0.2175, 0.0843, 0.0176, 0.001],
    8: [1, 0.8502, 0.6504, 0.4672, 0.3007, 0.1675, 0.0676, 0.0176, 0.001],
}


def fixed_times(times: list[float], teacher) -> torch.Tensor:
    """A fixed list of normalised times in [0.001, 1], mapped onto the teacher's [t_eps, T]."""
    t = torch.tensor(times, dtype=torch.float64)
    t_eps, t_max = teacher.time.t(teacher.sigma_min), teacher.time.t(teacher.sigma_max)
    frac = (t - t[-1]) / (t[0] - t[-1])
    return teacher.time.sigma(frac * (t_max - t_eps) + t_eps)


@register_schedule("gits")
def gits(steps: int, teacher) -> torch.Tensor:
    """GITS-optimised time steps (Chen et al., 2024) as fixed lists for 4-8 steps."""
    if steps not in GITS_TIMES:
        raise GasbenchError(
            f"the gits schedule has fixed lists for {sorted(GITS_TIMES)} steps only, not {steps}; "
            f"choose another --schedule."
        )
    return fixed_times(GITS_TIMES[steps], teacher)


@dataclass(frozen=True)
class PaperSchedule:
    """A paper's schedule as it depends on the teacher: ``small_pixel`` for an unguided pixel-space
    teacher at most ``max_side`` pixels wide, ``otherwise`` for a larger, latent, text-to-image or
    guided one. What a handcrafted solver runs on without ``--schedule`` (its ``paper_schedule``)."""

    small_pixel: str
    otherwise: str
    max_side: int

    def __call__(self, teacher) -> str:
        pixel = teacher.modality == "pixel" and getattr(teacher, "guidance_scale", 1.0) == 1.0
        return self.small_pixel if pixel and max(teacher.shape[-2:]) <= self.max_side else self.otherwise


# DDIM (Song et al., 2021, App. D.2): quadratic time steps on CIFAR-10 (32x32), linear on CelebA 64
# and LSUN 256; the DPM-Solver code repeats it ("time_quadratic ... Used in DDIM for low-resolutional
# data", LD3 release ldm/models/diffusion/dpm_solver/dpm_solver.py:282).
DDIM_SCHEDULE = PaperSchedule("time-quadratic", "time-uniform", max_side=32)
# DPM-Solver / DPM-Solver++ (Lu et al., 2022a/b): "logSNR ... time_uniform (Recommended for
# high-resolutional data)" (same file :280-281), time-uniform for DPM-Solver++'s guided and latent
# sampling (Sec. 6); UniPC (Zhao et al., 2023) keeps DPM-Solver++'s settings. GAS Table 17's UniPC
# teachers: logSNR on CIFAR-10, FFHQ, AFHQv2 64x64, time-uniform / -quadratic on latent LSUN / ImageNet.
DPM_SOLVER_SCHEDULE = PaperSchedule("logsnr", "time-uniform", max_side=64)
# DEIS / iPNDM (Zhang & Chen, 2023): time-quadratic ("time square"); DLMS Sec. 4.4 finds DEIS best
# on it for the EDM teachers (CIFAR-10, FFHQ, ImageNet 64) and time-uniform on the others.
DEIS_SCHEDULE = PaperSchedule("time-quadratic", "time-uniform", max_side=64)


def make_sigmas(schedule: str, steps: int, teacher) -> torch.Tensor:
    """Resolve a schedule by name and check what it returns."""
    if steps < 1:
        raise GasbenchError(f"a schedule needs at least one step, got {steps}.")
    sigmas = SCHEDULES.get(schedule)(steps, teacher)
    if sigmas.shape != (steps + 1,) or not bool(torch.all(sigmas[:-1] > sigmas[1:])):
        raise GasbenchError(f"schedule '{schedule}' did not return {steps + 1} descending sigmas.")
    return sigmas
