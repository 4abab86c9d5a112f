"""Diffusion times: the maps t <-> sigma that time-based step schedules are uniform in.

Every teacher has one (:attr:`Teacher.time`, ``sigma(t)`` on tensors and ``t(sigma)``); the time-
uniform, time-quadratic and GITS schedules of :mod:`gasbench.solvers.schedules`, GS/GAS's stick-
breaking times, LD3's and DLMS's time parametrisations are defined in it. The maps are distinct
functions, not one map with other constants:

* :class:`VPLinearTime`: the continuous VP SDE with a linear beta (Song et al., 2021, Eq. 33),
  sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); the default, and EDM's VP
  preconditioning's c_noise (EDM Table 1).
* the diffusers training schedules, each a time map plus how one network call is wrapped
  (:class:`NoiseSchedule`, read from a scheduler config by :func:`schedule_from_config`):
  :class:`DiscreteVPSchedule` (a discrete alphabar table: log sigma interpolated in the fractional
  timestep), :class:`EDMSchedule` (t = sigma) and :class:`FlowMatchSchedule` (the shifted
  rectified-flow time).

The GAS release's own discrete time (log alpha interpolated in t, ``DiscreteVPTime``) lives with
the release's solver in :mod:`gasbench.solvers.release`, whose code hash must cover it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from gasbench.core.errors import GasbenchError
from gasbench.teachers.preconditioning import edm_scalings


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """:func:`gasbench.solvers.executor.per_sample`, imported on use: the solvers import the
    Teacher contract, which imports this module."""
    from gasbench.solvers import executor

    return executor.per_sample(values, like)


@dataclass(frozen=True)
class VPLinearTime:
    """The VP-linear diffusion time of Song et al. (2021): sigma(t)^2 = exp(beta_d t^2/2 + beta_min t) - 1.

    Time-based schedules (time-uniform, time-quadratic, GITS) are defined in this t.
    """

    beta_min: float = 0.1
    beta_d: float = 19.9

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t(self, sigma: Union[float, torch.Tensor]) -> Union[float, torch.Tensor]:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d: a float for
        a float sigma; for a tensor, a tensor in its dtype computed as EDM's ``VPPrecond`` does."""
        if isinstance(sigma, torch.Tensor):
            return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d
        log_term = math.log1p(sigma**2)
        return (math.sqrt(self.beta_min**2 + 2 * self.beta_d * log_term) - self.beta_min) / self.beta_d


VP_SCHEDULERS = {
    "DDPMScheduler", "DDIMScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "PNDMScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
}
EDM_SCHEDULERS = {"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
FLOW_SCHEDULERS = {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"}


class NoiseSchedule(ABC):
    """A diffusers training schedule seen from EDM sigma-space.

    ``sigma(t)`` / ``t(sigma)`` define the schedule's own diffusion time (what the time-based
    schedules of :mod:`gasbench.solvers.schedules` are uniform in, so an instance serves as
    :attr:`Teacher.time`); ``model_input`` and ``to_denoised`` wrap one network call.
    """

    kind: str
    prediction_type: str
    sigma_min: float
    sigma_max: float
    sigma_data: float = 0.5

    @abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def t(self, sigma: float) -> float: ...

    @abstractmethod
    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, timestep (B,)) for x = x_0 + sigma * eps with per-sample sigma (B,)."""

    @abstractmethod
    def to_denoised(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The x_0 estimate D(x, sigma) from the network's output on :meth:`model_input`."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "prediction_type": self.prediction_type}


class DiscreteVPSchedule(NoiseSchedule):
    """A DDPM-style discrete schedule (Ho et al., 2020): alphabar_k, k = 0..N-1. Time map: the
    fractional timestep, t = (k + 1) / N, with log sigma linear in k between grid points.

    sigma_k = sqrt((1 - alphabar_k) / alphabar_k). Between grid points log-sigma is linear in the
    fractional timestep k (the network's sinusoidal embedding takes any real k), which is both the
    timestep fed to the network and, as t = (k + 1) / N in (0, 1], the diffusion time.
    Predictions (x_vp = x / sqrt(1 + sigma^2), alpha = 1 / sqrt(1 + sigma^2)):
    epsilon: D = x - sigma * eps; v_prediction (Salimans & Ho, 2022, Sec. 4):
    D = alpha * x_vp - sigma * alpha * v; sample: D = output.
    """

    kind = "discrete-vp"
    PREDICTIONS = ("epsilon", "v_prediction", "sample")

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in self.PREDICTIONS:
            raise GasbenchError(f"unsupported prediction_type '{prediction_type}' for a VP schedule; "
                                f"supported: {', '.join(self.PREDICTIONS)}.")
        abar = alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type
        self.log_sigmas = (0.5 * (torch.log1p(-abar) - torch.log(abar)))
        self.steps = len(abar)
        self.sigma_min, self.sigma_max = math.exp(self.log_sigmas[0]), math.exp(self.log_sigmas[-1])

    def _sigma_at(self, k: torch.Tensor) -> torch.Tensor:
        # linear in log-sigma, extrapolated from the end intervals (learned times may overshoot)
        low = k.detach().floor().clamp(0, self.steps - 2).long()
        w = k - low
        log_sigmas = self.log_sigmas.to(k.device)
        return torch.exp((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1])

    def _timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = torch.log(sigma.to(torch.float64))
        log_sigmas = self.log_sigmas.to(log_sigma.device)
        high = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, self.steps - 1)
        w = (log_sigma - log_sigmas[high - 1]) / (log_sigmas[high] - log_sigmas[high - 1])
        return (high - 1 + w).clamp(0, self.steps - 1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._sigma_at(t.to(torch.float64) * self.steps - 1)

    def t(self, sigma: float) -> float:
        return (float(self._timestep(torch.tensor([sigma], dtype=torch.float64))) + 1) / self.steps

    def model_input(self, x, sigma):
        return x / per_sample((1 + sigma**2).sqrt(), x), self._timestep(sigma)

    def to_denoised(self, output, x, sigma):
        s = per_sample(sigma, x)
        if self.prediction_type == "epsilon":
            return x - s * output
        if self.prediction_type == "v_prediction":
            alpha = 1 / (1 + s**2).sqrt()
            return alpha * (alpha * x) - s * alpha * output
        return output


class EDMSchedule(NoiseSchedule):
    """EDM preconditioning (Karras et al., 2022, Table 1) as diffusers' EDM schedulers define it:
    :func:`~gasbench.teachers.preconditioning.edm_scalings`, with c_out negated for v_prediction.
    Time map: sigma itself (EDM's sigma(t) = t).
    """

    kind = "edm"
    PREDICTIONS = ("epsilon", "v_prediction")

    def __init__(self, sigma_min: float, sigma_max: float, sigma_data: float = 0.5, prediction_type: str = "epsilon"):
        if prediction_type not in self.PREDICTIONS:
            raise GasbenchError(f"unsupported prediction_type '{prediction_type}' for an EDM schedule; "
                                f"supported: {', '.join(self.PREDICTIONS)} (as diffusers' EDM schedulers).")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.prediction_type = prediction_type

    def sigma(self, t):
        return t.to(torch.float64)

    def t(self, sigma):
        return float(sigma)

    def model_input(self, x, sigma):
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        return x * per_sample(c_in, x), c_noise

    def to_denoised(self, output, x, sigma):
        c_skip, c_out, _, _ = edm_scalings(per_sample(sigma, x), self.sigma_data)
        sign = 1 if self.prediction_type == "epsilon" else -1
        return c_skip * x + sign * c_out * output


class FlowMatchSchedule(NoiseSchedule):
    """Rectified flow (Liu et al., 2023; Lipman et al., 2023): x_t = (1 - t) x_0 + t eps, v = eps - x_0.
    Time map: the unshifted flow time u, sigma = s u / (1 - u).

    sigma = t / (1 - t) and x_t = (1 - t) x; D = x_t - t v; the network's timestep is t * N. The
    diffusion time is the unshifted u of diffusers' schedule, t = s u / (1 + (s - 1) u) with
    ``shift`` s (Esser et al., 2024, Eq. 23), i.e. sigma = s u / (1 - u): time-uniform steps are
    the scheduler's own. t = 1 is pure noise (infinite sigma), so sigma_max is the last finite point
    of the training grid, u = (N - 1) / N, and sigma_min its first, u = 1 / N.
    """

    kind = "flow-matching"
    prediction_type = "flow"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, dynamic: Optional[dict] = None):
        self.steps, self.shift = int(num_train_timesteps), float(shift)
        self.dynamic = dynamic  # how a resolution-dependent shift was resolved (for the record)
        self.sigma_min = float(self.sigma(torch.tensor(1 / self.steps, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1 - 1 / self.steps, dtype=torch.float64)))

    def sigma(self, t):
        t = t.to(torch.float64)
        return self.shift * t / (1 - t)

    def t(self, sigma):
        return float(sigma) / (self.shift + float(sigma))

    def model_input(self, x, sigma):
        t = sigma / (1 + sigma)
        return x * per_sample(1 - t, x), t * self.steps

    def to_denoised(self, output, x, sigma):
        t = per_sample(sigma / (1 + sigma), x)
        return (1 - t) * x - t * output

    def describe(self):
        return {**super().describe(), "shift": self.shift, **({"dynamic_shift": self.dynamic} if self.dynamic else {})}


def dynamic_shift(config: dict, image_seq_len: int) -> tuple[float, dict]:
    """The shift s of a scheduler with ``use_dynamic_shifting`` at one resolution, and how it was found.

    diffusers' Flux/SD3 pipelines set mu linearly in the latent token count between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) (diffusers'
    ``calculate_shift``) and warp the unshifted time u by e^mu / (e^mu + 1/u - 1) ("exponential")
    or mu / (mu + 1/u - 1) ("linear"): the static shift of :class:`FlowMatchSchedule` with s = e^mu
    or s = mu. Resolved once per teacher (one resolution per run) and recorded."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    kind = config.get("time_shift_type", "exponential")
    if kind not in ("exponential", "linear"):
        raise GasbenchError(f"time_shift_type '{kind}' in the scheduler config is not one diffusers defines "
                            f"(exponential, linear).")
    shift = math.exp(mu) if kind == "exponential" else mu
    return shift, {"mu": mu, "image_seq_len": int(image_seq_len), "time_shift_type": kind}


def schedule_from_config(config: dict, image_seq_len: Optional[int] = None) -> NoiseSchedule:
    """The :class:`NoiseSchedule` a diffusers scheduler config describes (by its ``_class_name``);
    ``image_seq_len`` (latent tokens) resolves a flow scheduler's dynamic shift (:func:`dynamic_shift`)."""
    name = config.get("_class_name", "")
    prediction = config.get("prediction_type", "epsilon")
    if name in FLOW_SCHEDULERS or config.get("use_flow_sigmas"):
        if config.get("invert_sigmas") or config.get("shift_terminal"):
            raise GasbenchError(f"{name} with invert_sigmas or shift_terminal is not supported; gasbench needs the "
                                f"shifted flow time with t = 1 at the noise end.")
        steps = config.get("num_train_timesteps", 1000)
        if config.get("use_dynamic_shifting"):
            if image_seq_len is None:
                raise GasbenchError(f"{name} shifts its times by resolution (use_dynamic_shifting); this model's "
                                    f"resolution is unknown here, so its schedule cannot be resolved.")
            return FlowMatchSchedule(steps, *dynamic_shift(config, image_seq_len))
        shift = config.get("flow_shift", 1.0) if config.get("use_flow_sigmas") else config.get("shift", 1.0)
        return FlowMatchSchedule(steps, shift)
    if name in EDM_SCHEDULERS:
        return EDMSchedule(config.get("sigma_min", 0.002), config.get("sigma_max", 80.0),
                           config.get("sigma_data", 0.5), prediction)
    if name in VP_SCHEDULERS or "beta_schedule" in config or "trained_betas" in config:
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
        try:
            abar = DDPMScheduler(**{k: config[k] for k in keys if config.get(k) is not None}).alphas_cumprod
        except (ValueError, NotImplementedError) as exc:
            raise GasbenchError(f"the scheduler config ({name or 'no _class_name'}) has an unsupported beta schedule: {exc}") from exc
        # zero terminal SNR (Lin et al., 2024) puts the last sigma at infinity; keep it finite
        # at alphabar = 2^-24 as diffusers' Euler scheduler does
        return DiscreteVPSchedule(abar.clamp(min=2.0**-24), prediction)
    raise GasbenchError(f"unknown scheduler '{name}': gasbench converts discrete VP (DDPM-family), EDM "
                        f"({', '.join(sorted(EDM_SCHEDULERS))}) and flow-matching ({', '.join(sorted(FLOW_SCHEDULERS))}) "
                        f"schedulers.")
