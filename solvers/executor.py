"""The one multistep executor every solver runs on (GAS, Eq. 13).

A solver with M denoiser evaluations is a *coefficient table*: evaluation points x_0 = x_T,
x_1, ..., x_{M-1}, output x_M, and

    x_{n+1} = sum_{j<=n} a[n, j] * x_j + sum_{j<=n} c[n, j] * D(x_j, sigma_j),   n = 0..M-1.

Handcrafted solvers are written as ordinary sampling loops over vectors (k-diffusion style);
:func:`trace` runs such a loop once on symbolic vectors (:class:`LinComb`) and records the table.
Learned solvers build or correct the table directly. :func:`execute` applies a table to a real
denoiser, counts the evaluations it makes and, on request, times denoiser and solver arithmetic
separately. Coefficients may be tensors that require grad, so a table is differentiable in its
time steps and coefficients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

Scalar = Union[float, torch.Tensor]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LinComb:
    """A symbolic vector: a linear combination of x_T (key -1) and denoiser outputs D_j (key j).

    Supports the linear operations a sampling loop uses (+, -, scalar *, scalar /), so the
    same loop that reads like a paper's update can be traced into a coefficient table.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: dict[int, Scalar]):
        self.terms = terms

    def _combine(self, other: "LinComb", sign: float) -> "LinComb":
        if not isinstance(other, LinComb):
            return NotImplemented
        terms = dict(self.terms)
        for key, coef in other.terms.items():
            terms[key] = terms[key] + sign * coef if key in terms else sign * coef
        return LinComb(terms)

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __neg__(self):
        return LinComb({k: -v for k, v in self.terms.items()})

    def __mul__(self, scalar: Scalar):
        if isinstance(scalar, LinComb):
            raise TypeError("a sampling loop may only combine vectors linearly")
        return LinComb({k: v * scalar for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar: Scalar):
        return LinComb({k: v / scalar for k, v in self.terms.items()})


@dataclass
class SolverTable:
    """Coefficients of Eq. 13 for one solver, one time grid and M = NFE evaluations.

    a, c: (M, M) lower-triangular; row n produces x_{n+1} (row M-1 produces the output).
    sigmas: (M,) noise level at which each evaluation point is fed to the denoiser (it may
    differ from the integration grid for decoupled solvers).
    sigma_final: noise level of the output (0 or the teacher's sigma_min).
    """

    a: torch.Tensor
    c: torch.Tensor
    sigmas: torch.Tensor
    sigma_final: float

    @property
    def nfe(self) -> int:
        return int(self.sigmas.shape[0])


def trace(loop: Callable[..., LinComb], sigmas: torch.Tensor, **params) -> SolverTable:
    """Run a sampling loop ``loop(model, x, sigmas, **params)`` on symbolic vectors.

    The loop calls ``model(x, sigma)`` like a denoiser; every call is recorded as one evaluation
    point. Scalars stay torch tensors, so gradients flow from the table back to ``sigmas``.
    """
    rows: list[LinComb] = []
    eval_sigmas: list[torch.Tensor] = []

    def model(x: LinComb, sigma: torch.Tensor) -> LinComb:
        rows.append(x)
        eval_sigmas.append(torch.as_tensor(sigma, dtype=sigmas.dtype))
        return LinComb({len(rows) - 1: 1.0})

    output = loop(model, LinComb({-1: 1.0}), sigmas, **params)
    rows.append(output)
    m = len(eval_sigmas)
    if m == 0:
        raise ValueError("a solver must evaluate the denoiser at least once")
    if rows[0].terms != {-1: 1.0}:
        raise ValueError("the first evaluation must be at the initial noise x_T")
    zero = sigmas.new_zeros(())
    a = [[zero] * m for _ in range(m)]
    c = [[zero] * m for _ in range(m)]
    for n, row in enumerate(rows[1:]):
        for key, coef in row.terms.items():
            if key >= n + 1:
                raise ValueError("a sampling loop used a denoiser output before computing it")
            coef = torch.as_tensor(coef, dtype=sigmas.dtype)
            if key == -1:
                a[n][0] = coef
            else:
                c[n][key] = coef
    return SolverTable(
        a=torch.stack([torch.stack(r) for r in a]),
        c=torch.stack([torch.stack(r) for r in c]),
        sigmas=torch.stack(eval_sigmas),
        sigma_final=float(sigmas[-1].detach()),
    )


@dataclass
class ExecutionStats:
    """What one :func:`execute` call did: evaluations made and where the time went."""

    nfe: int = 0
    denoiser_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def solver_seconds(self) -> float:
        return self.total_seconds - self.denoiser_seconds


def _weighted_sum(weights, vectors: list[torch.Tensor], skip_zeros: bool) -> torch.Tensor:
    out: Optional[torch.Tensor] = None
    for w, v in zip(weights, vectors):
        if skip_zeros and w == 0:
            continue
        out = w * v if out is None else out + w * v
    if out is None:  # every coefficient zero: the update maps to the origin
        return torch.zeros_like(vectors[0])
    return out


def execute(
    table: SolverTable,
    denoiser: Denoiser,
    x_T: torch.Tensor,
    *,
    stats: Optional[ExecutionStats] = None,
    callback: Optional[Callable[[dict], None]] = None,
    return_trajectory: bool = False,
):
    """Apply ``table`` to ``denoiser`` starting from noise ``x_T`` (Eq. 13).

    ``denoiser(x, sigma)`` returns the x_0 estimate; the count of its calls is the NFE and is
    checked against the table. Zero coefficients are skipped unless the table is being trained,
    so the handcrafted solvers cost no more than their usual update.
    """
    stats = stats if stats is not None else ExecutionStats()
    differentiable = table.a.requires_grad or table.c.requires_grad
    a = table.a.to(x_T.dtype)
    c = table.c.to(x_T.dtype)
    if not differentiable:
        # Python floats keep the zero test and scalar products cheap in the hot loop.
        a, c = a.tolist(), c.tolist()
    start = time.perf_counter()
    xs, ds = [x_T], []
    for n in range(table.nfe):
        t0 = time.perf_counter()
        d = denoiser(xs[n], table.sigmas[n])
        stats.denoiser_seconds += time.perf_counter() - t0
        stats.nfe += 1
        ds.append(d)
        if differentiable:
            weights = torch.cat([a[n, : n + 1], c[n, : n + 1]])
        else:
            weights = a[n][: n + 1] + c[n][: n + 1]
        x_next = _weighted_sum(weights, xs + ds, skip_zeros=not differentiable)
        xs.append(x_next)
        if callback is not None:
            callback({"i": n, "x": xs[n], "sigma": table.sigmas[n], "denoised": d})
    stats.total_seconds += time.perf_counter() - start
    if return_trajectory:
        return xs[-1], xs
    return xs[-1]
