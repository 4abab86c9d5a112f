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

An :class:`AdaptiveTable` is Eq. 13 whose rows are chosen while sampling, per sample (DLMS: a
designer network reads each evaluation's bottleneck feature and picks the next coefficients, time
step and time scale): its coefficients and evaluation sigmas may be (B,) tensors, broadcast over
the sample dimensions, and an evaluation point may be analytical (D = 0 without a network call,
DLMS's analytical first step). The executor still makes every denoiser call, counts and times
them and forms every weighted sum; the table only supplies the numbers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from gasbench.core.errors import GasbenchError

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
            raise NonLinearLoop("a vector times a vector")
        return LinComb({k: v * scalar for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar: Scalar):
        if isinstance(scalar, LinComb):
            raise NonLinearLoop("a division by a vector")
        return LinComb({k: v / scalar for k, v in self.terms.items()})


class NonLinearLoop(GasbenchError):
    """A sampling loop did something to a traced vector that is not +, -, or * or / by a scalar."""

    def __init__(self, what: str):
        super().__init__(
            f"solver loops may only combine vectors linearly (+, -, and * or / by a scalar, as in "
            f"x + h * d); the loop used {what}. Compute coefficients from sigmas, not from x or D."
        )


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

    try:
        output = loop(model, LinComb({-1: 1.0}), sigmas, **params)
    except TypeError as exc:  # x + 1.0, x ** 2, torch.exp(x): Python or torch refuses a LinComb
        if "LinComb" not in str(exc):
            raise
        raise NonLinearLoop(f"an operation Python could not apply ({exc})") from None
    rows.append(output)
    m = len(eval_sigmas)
    if m == 0:
        raise GasbenchError("a solver loop must evaluate the denoiser at least once (call model(x, sigma)).")
    if rows[0].terms != {-1: 1.0}:
        raise GasbenchError("a solver loop must make its first evaluation at the initial noise x_T it was given.")
    zero = sigmas.new_zeros(())
    a = [[zero] * m for _ in range(m)]
    c = [[zero] * m for _ in range(m)]
    for n, row in enumerate(rows[1:]):
        for key, coef in row.terms.items():
            if key >= n + 1:
                raise GasbenchError("a solver loop used a denoiser output before computing it.")
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


class AdaptiveRun(ABC):
    """One solve of an :class:`AdaptiveTable` from one batch: the per-sample state of that solve."""

    @abstractmethod
    def sigma(self, n: int) -> Optional[torch.Tensor]:
        """Noise level, () or (B,), at which evaluation point x_n is fed to the denoiser; None for
        an analytical point (D_n = 0 and no features, without calling the denoiser)."""

    @abstractmethod
    def row(self, n: int, denoised: list[torch.Tensor], features: Optional[torch.Tensor]
            ) -> tuple[Sequence[Scalar], Sequence[Scalar]]:
        """Row n of Eq. 13: the weights on x_0..x_n and on D_0..D_n that make x_{n+1}, each a
        Python float, a 0-d or a (B,) tensor, given the outputs so far and the (B, F) features of
        evaluation n (None unless :attr:`AdaptiveTable.features`, or for an analytical point)."""


class AdaptiveTable(ABC):
    """An Eq. 13 table whose rows are computed during sampling (see the module docstring).

    ``points`` evaluation points, of which ``nfe`` call the denoiser; ``features``: whether rows
    read the per-sample features of each evaluation (then the denoiser must have
    ``with_features(x, sigma) -> (D, h)``, as :meth:`gasbench.teachers.base.Teacher.denoiser` has).
    """

    nfe: int
    points: int
    sigma_final: Scalar
    features: bool = False

    @abstractmethod
    def start(self, x_T: torch.Tensor) -> AdaptiveRun:
        """A fresh run for the batch ``x_T``; the table itself holds no per-solve state."""


class PerSampleTable(AdaptiveTable, AdaptiveRun):
    """A table fixed before sampling but different per sample: a, c (B, M, M), sigmas (B, M),
    sigma_final (B,)."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, sigmas: torch.Tensor, sigma_final: torch.Tensor):
        self.a, self.c, self.sigmas, self.sigma_final = a, c, sigmas, sigma_final
        self.nfe = self.points = int(sigmas.shape[1])

    def start(self, x_T: torch.Tensor) -> AdaptiveRun:
        return self  # nothing changes during a solve

    def sigma(self, n: int) -> torch.Tensor:
        return self.sigmas[:, n]

    def row(self, n, denoised, features):
        return self.a[:, n, : n + 1].unbind(1), self.c[:, n, : n + 1].unbind(1)


Table = Union[SolverTable, AdaptiveTable]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) ``values`` shaped to broadcast over the sample dimensions of ``like`` (B, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _per_sample_sum(weights: Sequence[Scalar], vectors: list[torch.Tensor]) -> torch.Tensor:
    """sum_j w_j v_j with (B,) weights broadcast over each sample; Python zeros are skipped."""
    out: Optional[torch.Tensor] = None
    for w, v in zip(weights, vectors):
        if not isinstance(w, torch.Tensor):
            if w == 0:
                continue
        elif w.dim() == 1:
            w = per_sample(w.to(v.dtype), v)
        out = w * v if out is None else out + w * v
    return torch.zeros_like(vectors[0]) if out is None else out


def _execute_adaptive(table: AdaptiveTable, denoiser, x_T, stats: ExecutionStats, callback):
    if table.features and not hasattr(denoiser, "with_features"):
        raise TypeError("this adaptive table reads features: pass a denoiser with with_features(x, sigma), "
                        "such as teacher.denoiser(cond)")
    start = time.perf_counter()
    run = table.start(x_T)
    xs, ds, calls = [x_T], [], 0
    for n in range(table.points):
        sigma, features = run.sigma(n), None
        if sigma is None:  # analytical point: no network call
            d = torch.zeros_like(xs[n])
        else:
            t0 = time.perf_counter()
            if table.features:
                d, features = denoiser.with_features(xs[n], sigma)
            else:
                d = denoiser(xs[n], sigma)
            stats.denoiser_seconds += time.perf_counter() - t0
            stats.nfe += 1
            calls += 1
        ds.append(d)
        a_row, c_row = run.row(n, ds, features)
        if len(a_row) != n + 1 or len(c_row) != n + 1:
            raise ValueError(f"row {n} of an adaptive table must weigh x_0..x_{n} and D_0..D_{n}")
        xs.append(_per_sample_sum(list(a_row) + list(c_row), xs + ds))
        if callback is not None:
            callback({"i": n, "x": xs[n], "sigma": sigma, "denoised": d, "a": a_row, "c": c_row})
    if calls != table.nfe:
        raise ValueError(f"an adaptive table declared {table.nfe} evaluations but made {calls}")
    stats.total_seconds += time.perf_counter() - start
    return xs


def execute(
    table: Table,
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
    so the handcrafted solvers cost no more than their usual update. An :class:`AdaptiveTable`
    is run row by row as it chooses them; its callback payload also holds the row (``a``, ``c``).
    """
    stats = stats if stats is not None else ExecutionStats()
    if isinstance(table, AdaptiveTable):
        xs = _execute_adaptive(table, denoiser, x_T, stats, callback)
        return (xs[-1], xs) if return_trajectory else xs[-1]
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
