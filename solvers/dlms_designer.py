"""DLMS sampling (Algorithm 2): the designer network g_phi, the multistep update it drives (Eq.
8-9) and the adaptive Eq. 13 table the shared executor runs; the method and its training
(Algorithm 1) are :mod:`gasbench.solvers.dlms`, whose module docstring describes the designer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from gasbench.solvers.executor import AdaptiveRun, AdaptiveTable, per_sample

PORTION_EPS = 1e-5  # each step keeps a portion in [eps, 1 - eps] of the time left
TIME_CHANNELS = 8  # AMED-Plugin's noise_channels: sinusoidal channels of the time embedding
FEATURE_UNITS = 4  # AMED-Plugin's bottleneck_output_dim: the feature embedding's width


def time_embedding(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 8): cos and sin of t at frequencies 10^(-4 i / 3), i = 0..3 (DDPM++'s
    positional embedding with endpoint=True, as AMED-Plugin's ``map_noise``)."""
    half = TIME_CHANNELS // 2
    angles = t[:, None] * 1e-4 ** (torch.arange(half, dtype=t.dtype) / (half - 1))
    return torch.cat([angles.cos(), angles.sin()], dim=1)


@dataclass
class Designer:
    """g_phi with what turns its outputs into a step: per point n, (a, t_next, s_next)."""

    params: dict[str, torch.Tensor]
    teacher: object
    points: int  # evaluation points = steps (NFE, plus the analytical first step)
    order: int
    afs: bool
    kind: str = "mlp"
    scale_bound: Optional[float] = None  # None: exp, unbounded

    @property
    def t_max(self) -> float:
        return self.teacher.time.t(self.teacher.sigma_max)

    @property
    def delta(self) -> float:
        return self.teacher.time.t(self.teacher.sigma_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.teacher.time.sigma(t)

    def history(self, n: int) -> int:
        """Order m of the update after point n: the outputs available, up to p (warm-up)."""
        return min(self.order, n + 1)

    def outputs(self, n: int, features: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The p + 1 raw outputs (B, p + 1) of g_phi(h_n, t_n, n) (module docstring, ``designer``)."""
        p = self.params
        if self.kind == "mlp":
            step = features.new_zeros(len(features), self.points)
            step[:, n] = 1.0
            hidden = F.silu(torch.cat([features, t[:, None], step], dim=1) @ p["w1"] + p["b1"])
            return hidden @ p["w2"] + p["b2"][n]
        h = F.silu(features @ p["feature_w1"] + p["feature_b1"]) @ p["feature_w2"] + p["feature_b2"]
        time = F.silu(time_embedding(self.sigma(t)) @ p["time_w"] + p["time_b"])
        return torch.cat([h, time], dim=1) @ p["w2"] + p["b2"][n]

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """The time scale from its output: exp, or in [1 - b, 1 + b] for a bound b; 1 at 0."""
        b = self.scale_bound
        return raw.exp() if b is None else 1 - b + 2 * b * torch.sigmoid(raw)

    def __call__(self, n: int, features: torch.Tensor, t: torch.Tensor):
        """g_phi(h_n, t_n, n): coefficients (B, m) summing to one, t_{n+1} (B,), s_{n+1} (B,)."""
        out = self.outputs(n, features, t)
        m = self.history(n)
        rest = out[:, : max(m - 1, 0)]
        a = torch.cat([1 - rest.sum(1, keepdim=True), rest], dim=1) if m > 0 else out[:, :0]
        if n == self.points - 1:  # the last step ends at delta
            t_next = torch.full_like(t, self.delta)
        else:
            portion = torch.sigmoid(out[:, -2]) * (1 - 2 * PORTION_EPS) + PORTION_EPS
            t_next = self.delta + (t - self.delta) * portion
        return a, t_next, self.scale(out[:, -1])


def multistep(x: torch.Tensor, sigma, sigma_next, a: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 8-9 with per-sample sigma, sigma_next (B,) and a (B, m) on the newest m outputs."""
    r = per_sample(sigma_next / sigma, x)
    out = r * x
    if a.shape[1]:
        combined = sum(per_sample(a[:, k], x) * history[-1 - k] for k in range(a.shape[1]))
        out = out + (1 - r) * combined
    return out


class DLMSTable(AdaptiveTable):
    """Algorithm 2 as an adaptive Eq. 13 table: g_phi picks each row from the evaluation's feature."""

    features = True

    def __init__(self, designer: Designer):
        self.designer = designer
        self.points, self.nfe = designer.points, designer.points - int(designer.afs)
        self.sigma_final = float(designer.teacher.sigma_min)

    def start(self, x_T: torch.Tensor) -> AdaptiveRun:
        return _DLMSRun(self.designer, len(x_T))


class _DLMSRun(AdaptiveRun):
    """One batch's solve: the per-sample times t_n and time scales s_n chosen so far."""

    def __init__(self, designer: Designer, batch: int):
        self.designer = designer
        self.t = [torch.full((batch,), designer.t_max, dtype=torch.float64)]
        self.scale = [torch.ones(batch, dtype=torch.float64)]

    def sigma(self, n: int):
        if n == 0 and self.designer.afs:
            return None
        return self.scale[n] * self.designer.sigma(self.t[n])

    def row(self, n, denoised, features):
        d = self.designer
        t = self.t[n]
        h = t.new_zeros(len(t), d.teacher.feature_dim) if features is None else features.to(torch.float64)
        a, t_next, s_next = d(n, h, t)
        self.t.append(t_next)
        self.scale.append(s_next)
        r = d.sigma(t_next) / d.sigma(t)
        c = [0.0] * (n + 1)
        for k in range(a.shape[1]):
            c[n - k] = (1 - r) * a[:, k]
        return [0.0] * n + [r], c
