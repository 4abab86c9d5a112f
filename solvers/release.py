"""The GAS authors' trained GS/GAS students as a learned solver (``gs-release`` / ``gas-release``).
Oganov et al. (2025), arXiv:2510.17699; github.com/3145tttt/GAS. The student files and their
format are read by :mod:`gasbench.teachers.release`.

The student's sampling rule (``GeneralizedSolver.sample`` with theoretical guidance) works in
the variance-preserving (VP) variables of DPM-Solver's ``NoiseScheduleVP``: time t in [t_eps, 1],
state y = alpha(t) x (x in gasbench's EDM sigma space), sigma(t) = sqrt(1 - alpha^2) / alpha.
Its time steps are a stick-breaking product measured from the top, t_0 = 1 (not from gasbench
GS's bottom, Eq. 14), and its decoupling is applied in VP space: the network sees the VP state
as if it were at t' = t_n + xi_n, i.e. the EDM input z = y / alpha(t') at sigma(t'), and the noise
estimate (z - D) / sigma(t') is turned back into a data prediction at t_n. With xi != 0 that is
neither gasbench GS's decoupling nor any D(x_n, sigma) call, and the first evaluation point is a
rescaled x_T, so the student cannot be mapped onto :class:`~gasbench.solvers.gs.GeneralizedSolver`
exactly; it is its own learned solver whose sampling loop is the release's rule, traced into an
Eq. 13 table and run by the shared executor (see :func:`release_loop` and
:class:`StartScaledTable`). Its output is the release's sample, the VP state at t_eps
(alpha(t_eps) x, what ``generate.py`` saves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.records import cell_dir
from gasbench.core.registry import register_solver
from gasbench.solvers.executor import AdaptiveRun, AdaptiveTable, SolverTable, trace
from gasbench.solvers.gs import PORTION_EPS, derivative_basis
from gasbench.solvers.handcrafted import dpmpp_update
from gasbench.solvers.learned import LearnedSolver
from gasbench.teachers.time import VPLinearTime
from gasbench.teachers.release import RELEASE_DATASET_OF_TEACHER, RELEASE_STUDENT_T_EPS, read_release_student

# --- the release's noise schedules and time steps ------------------------------------------------


class DiscreteVPTime:
    """``NoiseScheduleVP('discrete')`` of the release for a DDPM-style network (LDM, Stable
    Diffusion): log alpha piecewise linear in t through t_k = (k + 1) / N, k = 0..N-1, with
    log alpha(t_k) = log(alphabar_k) / 2, extrapolated from the end segments."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.to(torch.float64)
        self.knots = torch.arange(1, len(abar) + 1, dtype=torch.float64) / len(abar)
        self.log_alphas = 0.5 * torch.log(abar)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        k = torch.searchsorted(self.knots, t.detach().contiguous()).clamp(1, len(self.knots) - 1)
        t0, t1, y0, y1 = self.knots[k - 1], self.knots[k], self.log_alphas[k - 1], self.log_alphas[k]
        log_alpha = y0 + (t - t0) * (y1 - y0) / (t1 - t0)
        return torch.sqrt(torch.expm1(-2 * log_alpha))


def release_time(teacher) -> tuple[Union[VPLinearTime, DiscreteVPTime], Any]:
    """The release's t -> sigma for ``teacher``: (integration, evaluation).

    Integration: the schedule of the release's update rule, the linear VP one with beta_min 0.1
    and beta_d 19.9 for EDM networks (``EDMModel.setup_net_params`` recomputes exactly these from
    sigma(t_eps) and sigma(1) of that schedule), and for a discrete-time network its alphabar with
    log alpha interpolated in t. Evaluation: the sigma at which gasbench's ``teacher`` gets the
    network input and timestep the release feeds at t, the same map for EDM networks; for a
    discrete-time one the teacher's own time (t = (k + 1) / N at timestep k, log sigma interpolated
    between), since the release feeds timestep 1000 t - 1.
    """
    from gasbench.teachers.time import DiscreteVPSchedule

    if isinstance(teacher.time, DiscreteVPSchedule):
        return DiscreteVPTime(torch.sigmoid(-2 * teacher.time.log_sigmas)), teacher.time  # abar = 1 / (1 + sigma^2)
    if isinstance(teacher.time, VPLinearTime):
        return VPLinearTime(), VPLinearTime()
    raise GasbenchError(f"the GAS release's students and data are for VP teachers (EDM-VP, LDM, Stable Diffusion); "
                        f"teacher '{teacher.name}' has a {type(teacher.time).__name__} time.")


def release_times(mu_logit: torch.Tensor, t_eps: float) -> torch.Tensor:
    """``GSWrapper.get_t_steps``: the N + 1 decreasing times 1 = t_0 > ... > t_N = t_eps, with
    1 - t_(N-k) = (1 - t_eps) prod_{j<=k} mu_j for the portions mu = sigmoid(mu_logit) kept in
    [eps, 1 - eps]."""
    portions = torch.sigmoid(mu_logit) * (1 - 2 * PORTION_EPS) + PORTION_EPS
    rising = (1 - torch.cumprod(portions, 0)) * (1 - t_eps) + t_eps
    return torch.cat([rising.new_tensor([t_eps]), rising, rising.new_tensor([1.0])]).flip(0)


def release_logits(nfe: int, t_eps: float) -> torch.Tensor:
    """``GSWrapper.get_inv_t_steps`` of the release's initialisation, time-uniform steps."""
    inner = torch.linspace(t_eps, 1.0, nfe + 1, dtype=torch.float64)[1:-1]
    products = 1 - (inner - t_eps) / (1 - t_eps)
    portions = products / torch.cat([products.new_ones(1), products[:-1]])
    return torch.logit((portions - PORTION_EPS) / (1 - 2 * PORTION_EPS))


# --- the release's update rule, traced into a table ----------------------------------------------


def release_loop(model, x, sigmas, *, alphas, eval_sigmas, eval_alphas, a_diff, c_diff):
    """The release's GS (``GeneralizedSolver.sample``, theoretical guidance, order N), GAS Eq. 20
    / Algorithm 1 in its VP variables: y_n = alpha_n x_n on the integration steps ``sigmas``
    (alpha_n = ``alphas[n]``), evaluation n at sigma(t_n + xi_n) = ``eval_sigmas[n]`` on the VP
    state seen at that time, z_n = y_n / ``eval_alphas[n]``. ``x`` is the first evaluation point
    z_0. Update n: DPM-Solver++ of order min(3, n + 1) in y (the base, no lower-order final step)
    + ``c_diff[n, i]`` on its finite-difference basis and on the older data predictions +
    ``a_diff[n, i]`` on y_(n-i). Returns y_N."""
    steps = len(sigmas) - 1
    ys, denoised = [eval_alphas[0] * x], []
    for n in range(steps):
        z = x if n == 0 else ys[n] / eval_alphas[n]
        eps = (z - model(z, eval_sigmas[n])) / eval_sigmas[n]  # the noise estimate at t_n + xi_n
        denoised.append(ys[n] / alphas[n] - sigmas[n] * eps)  # ... as a data prediction at t_n
        k = min(3, n + 1)
        hist_sigmas, recent = sigmas[n - k + 1 : n + 1], denoised[n - k + 1 :]
        y = alphas[n + 1] * dpmpp_update(ys[n] / alphas[n], hist_sigmas, recent, sigmas[n + 1])
        for i, vector in enumerate(derivative_basis(hist_sigmas, recent, sigmas[n + 1])):
            y = y + c_diff[n, i] * vector
        for i in range(3, n + 1):
            y = y + c_diff[n, i] * denoised[n - i]
        for i in range(n + 1):
            y = y + a_diff[n, i] * ys[n - i]
        ys.append(y)
    return ys[-1]


class StartScaledTable(AdaptiveTable, AdaptiveRun):
    """A fixed Eq. 13 table whose first evaluation point is ``scale`` x x_T rather than x_T.

    Point 0 is analytical (x_T itself, D = 0, no network call, as DLMS's analytical first step),
    row 0 makes x_1 = scale x x_T, and ``table`` runs from x_1 on; so the executor makes the
    table's NFE calls and every weighted sum, with one more (free) point.
    """

    features = False

    def __init__(self, table: SolverTable, scale: float):
        self.table, self.scale = table, float(scale)
        self.nfe, self.points, self.sigma_final = table.nfe, table.nfe + 1, table.sigma_final
        self._a, self._c = table.a.tolist(), table.c.tolist()

    def start(self, x_T: torch.Tensor) -> AdaptiveRun:
        return self

    def sigma(self, n: int) -> Optional[torch.Tensor]:
        return None if n == 0 else self.table.sigmas[n - 1]

    def row(self, n, denoised, features):
        if n == 0:
            return [self.scale], [0.0]
        # a traced table weighs only its start (column 0) among the points
        return [0.0, self._a[n - 1][0]] + [0.0] * (n - 1), [0.0] + self._c[n - 1][:n]


# --- the authors' students as a learned solver ----------------------------------------------------


class ReleaseStudent(LearnedSolver):
    """A student trained by the GAS authors, sampled with the release's rule (module docstring).

    Parameters, in the release's own parametrisation: ``mu_logit`` (N-1,), ``t_couple`` (N,),
    ``a_diff`` and ``c_diff`` (N, N) with [n, i - 1] = the release's ``a{i}_diff[n]`` /
    ``c{i}_diff[n]``, and ``t_eps`` () from the release's config. gasbench never trains it:
    :func:`import_release_student` writes it into a result cell, where ``gasbench run`` loads it.
    """

    options: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    kind: ClassVar[str] = ""
    # not part of a run without --methods: there is nothing to evaluate until a student is imported
    in_default_run: ClassVar[bool] = False

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        """The release's initialisation (time-uniform steps, zero corrections and offsets): its
        untrained GS, DPM-Solver++(3M) on those steps; at an imported student's t_eps, else at the
        release config's for ``teacher`` (1e-3 for a teacher the release does not have)."""
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        t_eps = self.params["t_eps"].clone() if self.params is not None else torch.tensor(
            RELEASE_STUDENT_T_EPS.get(RELEASE_DATASET_OF_TEACHER.get(teacher.name, ""), 1e-3), dtype=torch.float64)
        zeros = torch.zeros(nfe, nfe, dtype=torch.float64)
        return {"mu_logit": release_logits(nfe, float(t_eps)), "t_couple": torch.zeros(nfe, dtype=torch.float64),
                "a_diff": zeros, "c_diff": zeros.clone(), "t_eps": t_eps}

    def _grid(self, params: dict[str, torch.Tensor], teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """Integration sigmas at t_n and evaluation sigmas at t_n + xi_n (:func:`release_time`)."""
        t = release_times(params["mu_logit"], float(params["t_eps"]))
        integration, evaluation = release_time(teacher)
        return integration.sigma(t), evaluation.sigma(t[:-1] + params["t_couple"])

    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> StartScaledTable:
        sigmas, eval_sigmas = self._grid(params, teacher)
        alphas, eval_alphas = (1 + sigmas**2).rsqrt(), (1 + eval_sigmas**2).rsqrt()
        table = trace(release_loop, sigmas, alphas=alphas, eval_sigmas=eval_sigmas, eval_alphas=eval_alphas,
                      a_diff=params["a_diff"], c_diff=params["c_diff"])
        # the release starts from y_0 = unit noise = x_T / sigma_max, i.e. z_0 = x_T / (sigma_max alpha(t'_0))
        return StartScaledTable(table, 1 / (teacher.sigma_max * float(eval_alphas[0])))

    def steps(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t = release_times(params["mu_logit"], float(params["t_eps"]))[:-1]
            sigmas, eval_sigmas = self._grid(params, teacher)
            return {"release time t_n": t, "sigma(t_n)": sigmas[:-1], "t_n + xi_n": t + params["t_couple"],
                    "evaluation sigma": eval_sigmas}

    def fit(self, teacher, nfe: int, *args, **kwargs):
        raise GasbenchError(self._not_imported(teacher, nfe))

    def load_state(self, directory: Path, teacher=None, nfe: Optional[int] = None) -> bool:
        """The imported student; with ``teacher`` and ``nfe`` (as ``gasbench run`` asks) a missing or
        mismatched one is an error naming the import, since gasbench cannot train it."""
        loaded = super().load_state(directory, teacher, nfe)
        if loaded or teacher is None or nfe is None:
            return loaded
        raise GasbenchError(self._not_imported(teacher, nfe, Path(directory)))

    def _not_imported(self, teacher, nfe: int, directory: Optional[Path] = None) -> str:
        where = f" in {directory}" if directory is not None else ""
        return (f"'{self.name}' is the GAS authors' {self.kind} student, which gasbench does not train, and no "
                f"student for teacher '{teacher.name}' at NFE {nfe} (these teacher weights) was imported{where}. "
                f"Import the release file first: `gasbench import-release FILE --dataset {teacher.name} "
                f"--kind {self.kind.lower()}`, e.g. a file from the hub's bayes-group-diffusion/GAS-students.")

    def adopt(self, params: dict[str, torch.Tensor], teacher, nfe: int, summary: dict[str, Any]) -> None:
        """Hold an imported student's parameters, as if they had been trained for (teacher, nfe)."""
        expected = self.parameters_for(teacher, nfe)
        if set(params) != set(expected) or any(params[k].shape != expected[k].shape for k in expected):
            raise GasbenchError(f"internal: release parameters do not have the shapes of NFE {nfe}.")
        self.params, self.summary = params, summary
        self.trained_for = (teacher.name, nfe)
        self._state_identity = self._identity(teacher, nfe)


@register_solver("gs-release", description="The GAS authors' trained GS student (imported release file)")
class GSRelease(ReleaseStudent):
    name = "gs-release"
    kind = "GS"


@register_solver("gas-release", description="The GAS authors' trained GAS student (imported release file)")
class GASRelease(ReleaseStudent):
    name = "gas-release"
    kind = "GAS"


RELEASE_SOLVERS = {"gs": GSRelease, "gas": GASRelease}

# --- a student file into its result cell ----------------------------------------------------------


def _student_t_eps(path: Path, teacher, t_eps: Optional[float]) -> tuple[float, str]:
    if t_eps is not None:
        return float(t_eps), "given"
    dataset = RELEASE_DATASET_OF_TEACHER.get(teacher.name)
    if dataset is None:
        dataset = next((part for part in reversed(Path(path).parts) if part in RELEASE_STUDENT_T_EPS), None)
    if dataset is None:
        known = ", ".join(f"{k} {v:g}" for k, v in RELEASE_STUDENT_T_EPS.items())
        raise GasbenchError(
            f"the release student's t_eps (its last time step) is not stored in {Path(path).name} and teacher "
            f"'{teacher.name}' is not one of the release's; give t_eps (the release's configs: {known}).")
    return RELEASE_STUDENT_T_EPS[dataset], f"release config {dataset}"


def load_release_student(path: Path, teacher, kind: str, t_eps: Optional[float] = None
                         ) -> tuple[ReleaseStudent, int, dict[str, Any]]:
    """A release student file as a ready solver for ``teacher``: (solver, NFE, info).

    ``kind``: ``gs`` or ``gas`` (the file does not say how it was trained; the leaderboard row is
    ``gs-release`` or ``gas-release``). ``t_eps``: the student's final time, which the file does
    not store; by default the release's config of ``teacher`` or of the hub folder in ``path``.
    """
    if kind not in RELEASE_SOLVERS:
        raise GasbenchError(f"kind must be one of {', '.join(RELEASE_SOLVERS)} (how the authors trained it), "
                            f"got {kind!r}.")
    params, info = read_release_student(path)
    t_eps, origin = _student_t_eps(path, teacher, t_eps)
    if not 0 < t_eps < 1:
        raise GasbenchError(f"t_eps must lie in (0, 1), the release's time range; got {t_eps}.")
    nfe = info["nfe"]
    solver = RELEASE_SOLVERS[kind]()
    info = {**info, "kind": solver.kind, "t_eps": t_eps, "t_eps_from": origin}
    solver.adopt({**params, "t_eps": torch.tensor(t_eps, dtype=torch.float64)}, teacher, nfe, info)
    return solver, nfe, info


def import_release_student(path: Path, teacher, kind: str, t_eps: Optional[float] = None,
                           results_dir: Path = Path("results")) -> Path:
    """Write a release student into its result cell (``<results>/<teacher>/<kind>-release/nfe<N>``,
    ``solver.safetensors`` + ``solver.json``), where ``gasbench run -m <kind>-release`` evaluates it
    on the same seeds and metrics as every other method. Returns the cell directory."""
    solver, nfe, _ = load_release_student(path, teacher, kind, t_eps)
    directory = cell_dir(results_dir, teacher.name, solver.name, nfe)
    solver.save_state(directory, teacher, nfe)
    return directory
