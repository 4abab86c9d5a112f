"""The Generalized Solver (GS) of GAS (Sec. 3.1, Eq. 13-20, Algorithm 1), and its ablations.

Three sets of parameters:

* theta, the time steps by the stick-breaking product (Eq. 14)
  t_n = (T - delta) * prod_{j<=n} sigmoid(theta_j) + delta, n = 1..N-1, with t_0 = T and
  t_N = delta (the teacher's sigma_max and sigma_min in its diffusion time ``teacher.time``),
  initialised to ``schedule`` (time-uniform by default, as the paper). As in the GAS code each
  portion is kept in [1e-5, 1 - 1e-5], so steps never coincide whatever theta becomes;
* phi, additive corrections, initialised at zero, to the base solver's theoretical coefficients
  recomputed at the current time steps (DPM-Solver++(3M), "theoretical guidance", Eq. 15-19):
  ``a_hat[n, j]`` on every previous point; ``c_hat[n, j]`` on the recent outputs in the base's
  own finite-difference basis (Algorithm 1: D_n, then D1_0, or D1 and D2) and directly on the
  older outputs, which the base does not use;
* xi, offsets of the times at which the denoiser is evaluated (decoupling), not clamped: the
  network is called at sigma(t_n + xi_n) while the update integrates on the t_n.

Untrained GS *is* DPM-Solver++(3M) on the same steps. Three choices are the GAS release's
(github.com/3145tttt/GAS, ``src/gas/generalized_solver.py``), each an option whose other value is
the plain EDM-space form:

* ``correction_space`` (default ``vp``, the release's): the corrections are added in the VP state
  y = alpha x, alpha = 1 / sqrt(1 + sigma^2), as the release's updates are written
  (generalized_solver.py:222-313: a{i}_diff on y_(n-i+1), c{i}_diff on the data predictions, the
  sum being y_(n+1)). In x that is a_hat[n, j] alpha_j / alpha_(n+1) on x_j and c_hat / alpha_(n+1)
  on the outputs; ``edm`` adds them to x, so the same Adam step moves x by a different amount;
* ``decouple_space`` (default ``vp``, the release's): the release's ``model_fn``
  (generalized_solver.py:39-41) gives the network the unchanged VP state as if at t_n + xi_n and
  turns its noise prediction into data with alpha, sigma of t_n (:func:`decoupled_output`);
  ``edm`` uses D(x_n, sigma(t_n + xi_n)) as it comes. Eq. 13 evaluates x_T itself first, so
  evaluation 0 keeps the ``edm`` form in both (the release would rescale x_T there);
* ``lower_order_final`` (default true, not the release's): the base's order at update n is
  min(n + 1, 3, N - n), the ``dpmpp3m`` solver's convention (1, 2, 2, 1 at NFE 4). GAS Algorithm 1
  and the release use min(n + 1, 3) (order N, ``cur_order = min(step, order)``,
  generalized_solver.py:387, main.py:72): set it false to match.

Measured on digits (300 iterations, 3 seed sets, FD / RMSE; the plain EDM form first): NFE 4
4.71 / 0.0619 -> 3.90 / 0.0529 with both ``vp`` options, NFE 8 4.00 / 0.0300 -> 3.99 / 0.0194;
FASHION. Each alone at NFE 4: ``correction_space=vp`` 4.56 / 0.0577, ``decouple_space=vp``
4.09 / 0.0615, ``lower_order_final=false`` 6.58 / 0.192: the release's base order starts
training from a third-order last step over a large log-SNR gap (initial L1 0.81 against
0.10) that this budget does not recover from. For a teacher whose own time is not VP (EDM, flow
matching) alpha is still the VP alpha of its sigma: GAS and its release are VP throughout.

Ablations (as solver options):

* ``guidance=false`` (GAS Table 5, "w/o theory"): the coefficients of each update on every
  previous point and output (in the ``correction_space`` state) are free parameters, initialised
  to DPM-Solver++(3M)'s at the initial steps and no longer recomputed when the steps move;
* ``decouple=false`` (GAS Eq. 20's xi removed; the paper has no table for it): no xi, the denoiser
  is evaluated on the integration steps;
* ``parametrization=s4s`` (Table 10, "S4S LMS"): x_{n+1} = a_n x_n + b_n sum_{j<=n} c_{j,n} D_j
  with the theoretical first-order a_n = sigma_{n+1}/sigma_n and b_n = 1 - a_n at the current
  steps and free multiplicative coefficients c (every previous output: no order limit), S4S's
  parametrisation (Frankel et al., 2025) as GAS compares it, initialised to DPM-Solver++(3M)
  (``decouple_space`` applies; ``correction_space`` does not, there being no additive corrections);
* ``parametrization=s4s-pc`` (Table 3, "S4S LMS + PC"): the same predictor plus a learned
  corrector that re-solves each step with the next output D_{n+1} (evaluated at the predicted
  point anyway, so no extra NFE), starting as the identity. Its coefficient count equals GS's
  minus one. (The GAS code's "PC" re-applies the update with the old outputs; this is the
  predictor-corrector of UniPC and S4S, with the corrected point used by the next step.)

Every variant is a sampling loop over symbolic vectors traced into an Eq. 13 table by
:func:`~gasbench.solvers.executor.trace`; the coefficients stay differentiable.
"""

from __future__ import annotations

from typing import Any

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_solver
from gasbench.solvers.executor import LinComb, SolverTable, trace
from gasbench.solvers.handcrafted import dpmpp_update, step_order
from gasbench.solvers.learned import LOSSES, TRAINING_OPTIONS, LearnedSolver
from gasbench.solvers.schedules import make_sigmas

PORTION_EPS = 1e-5  # stick-breaking portions live in [eps, 1 - eps] (GAS code: eps_mu_offset)
PARAMETRIZATIONS = ("gs", "s4s", "s4s-pc")
SPACES = ("vp", "edm")  # the state GS's corrections / decoupled calls act on: y = alpha x, or x itself


def stick_breaking_times(theta: torch.Tensor, t_max: float, delta: float) -> torch.Tensor:
    """Eq. 14: the N + 1 strictly decreasing times T = t_0 > t_1 > ... > t_N = delta."""
    portions = torch.sigmoid(theta) * (1 - 2 * PORTION_EPS) + PORTION_EPS
    inner = (t_max - delta) * torch.cumprod(portions, 0) + delta
    return torch.cat([theta.new_tensor([t_max]), inner, theta.new_tensor([delta])])


def inverse_stick_breaking(t: torch.Tensor, delta: float) -> torch.Tensor:
    """theta such that :func:`stick_breaking_times` gives back ``t`` (t_0 = T, t_N = delta)."""
    portions = (t[1:-1] - delta) / (t[:-2] - delta)
    return torch.logit((portions - PORTION_EPS) / (1 - 2 * PORTION_EPS))


def derivative_basis(sigma_hist, denoised_hist, sigma_next) -> list:
    """The vectors GS corrects the recent outputs along (GAS Algorithm 1, lines 2, 6 and 15):
    -D_n at order 1, then -D1_0 at order 2, or D1 and -D2 at order 3."""
    order = len(denoised_hist)
    s0, m0 = sigma_hist[-1], denoised_hist[-1]
    if order == 1:
        return [-m0]
    h = torch.log(s0 / sigma_next)
    r0 = torch.log(sigma_hist[-2] / s0) / h
    d1_0 = (m0 - denoised_hist[-2]) / r0
    if order == 2:
        return [-m0, -d1_0]
    r1 = torch.log(sigma_hist[-3] / sigma_hist[-2]) / h
    d1_1 = (denoised_hist[-2] - denoised_hist[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return [-m0, d1, -d2]


def dpmpp3m_step(sigmas: torch.Tensor, n: int, lower_order_final: bool) -> dict[int, torch.Tensor]:
    """DPM-Solver++(3M)'s update n on its own point and outputs: key -1 is the coefficient of
    x_n, key j that of D_j (the 'per-step' coefficients the ablations start from)."""
    k = step_order(3, n, len(sigmas) - 1, lower_order_final)
    outputs = [LinComb({j: 1.0}) for j in range(n - k + 1, n + 1)]
    update = dpmpp_update(LinComb({-1: 1.0}), sigmas[n - k + 1 : n + 1], outputs, sigmas[n + 1])
    return {key: torch.as_tensor(coef, dtype=sigmas.dtype) for key, coef in update.terms.items()}


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """alpha of the VP state y = alpha x at EDM noise level sigma (alpha^2 + (alpha sigma)^2 = 1)."""
    return (1 + sigma**2).rsqrt()


def state_scale(sigmas: torch.Tensor, space: str) -> torch.Tensor:
    """The factor taking x_n to the state the corrections act on: alpha_n (``vp``) or 1 (``edm``)."""
    return vp_alpha(sigmas) if space == "vp" else torch.ones_like(sigmas)


def decoupled_output(model, x, n: int, sigma, eval_sigma, space: str):
    """D_n, the data prediction at the integration step sigma_n = sigma(t_n) from the denoiser call
    at sigma(t_n + xi_n).

    ``edm``: D(x_n, sigma(t_n + xi_n)) as it comes. ``vp`` (the release's
    ``GeneralizedSolver.model_fn``, generalized_solver.py:39-41, on ``model_wrapper``'s noise
    prediction, solver_utils.py:297-299): the network gets the VP state y_n = alpha_n x_n unchanged
    as if at t_n + xi_n, i.e. the EDM input z = y_n / alpha', and its noise estimate
    eps = (z - D(z, sigma')) / sigma' becomes a data prediction with t_n's own alpha, sigma:
    D_n = x_n - sigma_n eps. The first point is x_T itself (Eq. 13 starts every table there), so
    evaluation 0 keeps the ``edm`` form.
    """
    if space == "edm" or n == 0:
        return model(x, eval_sigma)
    ratio, scale = sigma / eval_sigma, vp_alpha(sigma) / vp_alpha(eval_sigma)
    return (1 - ratio * scale) * x + ratio * model(scale * x, eval_sigma)


def gs_loop(model, x, sigmas, *, eval_sigmas, a_hat, c_hat, guidance=True, lower_order_final=False,
            correction_space="vp", decouple_space="vp"):
    """GS (Eq. 20 / Algorithm 1): base DPM-Solver++(3M) + corrections on the whole history, added
    to the state y = alpha x (``vp``, generalized_solver.py:222-313) or to x (``edm``)."""
    steps = len(sigmas) - 1
    alpha = state_scale(sigmas, correction_space)
    xs, ds = [x], []
    for n in range(steps):
        ds.append(decoupled_output(model, xs[n], n, sigmas[n], eval_sigmas[n], decouple_space))
        correction = LinComb({})
        if guidance:
            k = step_order(3, n, steps, lower_order_final)
            hist_sigmas, recent = sigmas[n - k + 1 : n + 1], ds[n - k + 1 :]
            x_next = dpmpp_update(xs[n], hist_sigmas, recent, sigmas[n + 1])
            for i, vector in enumerate(derivative_basis(hist_sigmas, recent, sigmas[n + 1])):
                correction = correction + c_hat[n, n - i] * vector
            older = range(n - k + 1)
        else:  # no theory: every coefficient is a free parameter
            x_next, older = LinComb({}), range(n + 1)
        for j in older:
            correction = correction + c_hat[n, j] * ds[j]
        for j in range(n + 1):
            correction = correction + (a_hat[n, j] * alpha[j]) * xs[j]
        xs.append(x_next + correction / alpha[n + 1])
    return xs[-1]


def s4s_loop(model, x, sigmas, *, eval_sigmas, c, corrector=None, decouple_space="vp"):
    """S4S's LMS (+ PC) parametrisation: x_{n+1} = a_n x_n + b_n sum_j c[n, j] D_j with the
    first-order a_n, b_n at the current steps; with ``corrector``, x_{n+1} is re-solved with
    D_{n+1} (row n of ``corrector``) once that output exists, before the next step uses it."""
    steps = len(sigmas) - 1
    ds, current, predicted = [], x, x
    for n in range(steps):
        ds.append(decoupled_output(model, predicted, n, sigmas[n], eval_sigmas[n], decouple_space))
        if corrector is not None and n > 0:
            a, b = sigmas[n] / sigmas[n - 1], 1 - sigmas[n] / sigmas[n - 1]
            current = a * current + b * _combination(corrector[n - 1], ds[: n + 1])
        else:
            current = predicted
        a, b = sigmas[n + 1] / sigmas[n], 1 - sigmas[n + 1] / sigmas[n]
        predicted = a * current + b * _combination(c[n], ds)
    return predicted


def _combination(weights, vectors):
    out = weights[0] * vectors[0]
    for w, v in zip(weights[1 : len(vectors)], vectors[1:]):
        out = out + w * v
    return out


@register_solver(
    "gs", description="Generalized Solver (GAS Eq. 20): learned steps, decoupling and corrections to DPM-Solver++(3M)"
)
class GeneralizedSolver(LearnedSolver):
    """GS; see the module docstring for the parametrisation, its ablations and CPU budget."""

    name = "gs"
    # validation pairs only score the fit (initial and final loss, early-stopping checks on the
    # first 100); the solver adopted is the final EMA either way, so 200, S4S's count, is enough
    validation_size = 200
    options = {
        "schedule": "time-uniform",
        "parametrization": "gs",
        "guidance": True,
        "decouple": True,
        "correction_space": "vp",
        "decouple_space": "vp",
        "lower_order_final": True,
        **TRAINING_OPTIONS,
    }
    choices = {"parametrization": PARAMETRIZATIONS, "loss": LOSSES, "correction_space": SPACES,
               "decouple_space": SPACES}

    def __init__(self, **options):
        super().__init__(**options)
        if self.config["parametrization"] != "gs" and not self.config["guidance"]:
            raise GasbenchError(
                "guidance=false ablates GS's additive theoretical guidance; the s4s parametrisations have none to remove."
            )

    def _time_range(self, teacher) -> tuple[float, float]:
        return teacher.time.t(teacher.sigma_max), teacher.time.t(teacher.sigma_min)

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        cfg = self.resolved_config(teacher)
        t_max, delta = self._time_range(teacher)
        sigmas = make_sigmas(cfg["schedule"], nfe, teacher)
        t = torch.tensor([teacher.time.t(float(s)) for s in sigmas], dtype=torch.float64)
        t[0], t[-1] = t_max, delta
        if not bool((t[1:] < t[:-1]).all()):
            raise GasbenchError(f"schedule '{cfg['schedule']}' does not give {nfe} strictly decreasing steps for GS.")
        params = {"theta": inverse_stick_breaking(t, delta)}
        if self.config["decouple"]:
            params["xi"] = torch.zeros(nfe, dtype=torch.float64)
        sigmas = teacher.time.sigma(stick_breaking_times(params["theta"], t_max, delta))
        zeros = torch.zeros(nfe, nfe, dtype=torch.float64)
        parametrization = self.config["parametrization"]
        if parametrization == "gs":
            params["a_hat"], params["c_hat"] = zeros.clone(), zeros.clone()
            if not self.config["guidance"]:
                alpha = state_scale(sigmas, self.config["correction_space"])
                for n in range(nfe):  # start from DPM-Solver++(3M) on the initial steps, in that state
                    for key, coef in dpmpp3m_step(sigmas, n, self.config["lower_order_final"]).items():
                        if key == -1:
                            params["a_hat"][n, n] = coef * alpha[n + 1] / alpha[n]
                        else:
                            params["c_hat"][n, key] = coef * alpha[n + 1]
            return params
        params["c"] = zeros.clone()
        for n in range(nfe):  # c = DPM-Solver++(3M)'s coefficients / b_n on the initial steps
            b = 1 - sigmas[n + 1] / sigmas[n]
            for key, coef in dpmpp3m_step(sigmas, n, self.config["lower_order_final"]).items():
                if key >= 0:
                    params["c"][n, key] = coef / b
        if parametrization == "s4s-pc":  # the corrector starts as the identity: same c, 0 on D_{n+1}
            params["corrector"] = torch.zeros(nfe - 1, nfe, dtype=torch.float64)
            params["corrector"][:, :-1] = params["c"][:-1, :-1]
        return params

    def integration_sigmas(self, params: dict[str, torch.Tensor], teacher) -> torch.Tensor:
        """The N + 1 noise levels the updates integrate between (sigma_max ... sigma_min)."""
        return teacher.time.sigma(stick_breaking_times(params["theta"], *self._time_range(teacher)))

    def steps(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            times = stick_breaking_times(params["theta"], *self._time_range(teacher))
            out = {"time t_n": times[:-1], "sigma(t_n)": teacher.time.sigma(times[:-1])}
            if "xi" in params:
                out["t_n + xi_n"] = times[:-1] + params["xi"]
            return {**out, **super().steps(params, teacher, nfe)}

    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> SolverTable:
        times = stick_breaking_times(params["theta"], *self._time_range(teacher))
        sigmas = teacher.time.sigma(times)
        eval_sigmas = teacher.time.sigma(times[:-1] + params["xi"]) if "xi" in params else sigmas[:-1]
        cfg = self.config
        if cfg["parametrization"] == "gs":
            return trace(gs_loop, sigmas, eval_sigmas=eval_sigmas, a_hat=params["a_hat"], c_hat=params["c_hat"],
                         guidance=cfg["guidance"], lower_order_final=cfg["lower_order_final"],
                         correction_space=cfg["correction_space"], decouple_space=cfg["decouple_space"])
        return trace(s4s_loop, sigmas, eval_sigmas=eval_sigmas, c=params["c"], corrector=params.get("corrector"),
                     decouple_space=cfg["decouple_space"])

    @classmethod
    def paper_budget(cls, teacher) -> dict[str, Any]:
        """GAS Appendix D.4: 1,400 training pairs, Adam lr 1e-3, EMA 0.999, clipping 1.0, and per
        kind of teacher D.4.1 (pixels: LPIPS, batch 24, 10k iterations), D.4.2 (latents: L1 in
        latent space, batch 8, 30k) or D.4.3 (Stable Diffusion: L1, batch 4, 1k, gradient
        checkpointing at every UNet call)."""
        common = {"train_size": 1400, "lr": 1e-3, "ema": 0.999, "grad_clip": 1.0}
        if teacher.modality == "text":
            return {**common, "loss": "l1", "batch_size": 4, "iterations": 1000, "checkpointing": True}
        if teacher.modality == "latent":
            return {**common, "loss": "l1", "batch_size": 8, "iterations": 30_000}
        return {**common, "loss": "lpips-vgg", "batch_size": 24, "iterations": 10_000}
