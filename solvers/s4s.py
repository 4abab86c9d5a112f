"""S4S and S4S-Alt (Frankel et al., 2025, "S4S: Solving for a Fast Diffusion Model Solver").

S4S learns *time-dependent* solver coefficients (Sec. 3.1.1, Table 1) on a fixed schedule,
starting from a handcrafted solver, by minimising the global error to the teacher's sample
under the relaxed objective (Eq. 7 / 9): each training pair's start point moves inside an L2
ball around its noise by projected steps (Algorithm 1), radius r proportional to m^(-5/2) for m
learned scalars (Appendix G.2). The paper gives only the proportionality; we anchor it at LD3's
radius (S4S takes its relaxation from LD3, Sec. 3.1.2): r = r_LD3(N) (m_LD3 / m)^(5/2) in
unit-noise norm, r_LD3(N) = 1e-3 C H W / N^2 the official LD3 radius at NFE N and
m_LD3 = 2N - 1 LD3's own learned scalars, so a solver learning as many scalars as LD3 gets LD3's
ball. ``relax`` scales it, 0 gives the exact objective Eq. 6.

In EDM's sigma space (alpha = 1) the updates of Table 1 (noise prediction) and Table 7 (data
prediction) read, for step i from sigma_{i-1} to sigma_i with a window of k = ``order`` outputs:

* noise LMS:  x_i = x_{i-1} + (sigma_i - sigma_{i-1}) sum_j b_{j,i} eps_{i-j}, eps = (x - D) / sigma.
  With Adams-Bashforth b it *is* iPNDM (``init=ipndm``, the paper's iPNDM-S4S);
* data LMS:   x_i = r_i x_{i-1} + (1 - r_i) sum_j b_{j,i} D_{i-j}, r_i = sigma_i / sigma_{i-1}.
  DPM-Solver++(kM) (``init=dpmpp``) and UniPC's predictor (``init=unipc``) are of this form;
* LMS + PC (``s4s-pc``): the data LMS predictor, then once D_i is evaluated at the predicted
  point, x_i is re-solved from x_{i-1} with corrector coefficients on D_i and the k before it
  (``corrector_width=k+1``, no extra NFE). With ``init=unipc`` it *is* UniPC (bh1, order k),
  whose corrector UniC-k weighs k + 1 outputs; with ``init=dpmpp`` the corrector starts as the
  identity. Table 1 counts k corrector coefficients per step (``corrector_width=k``: D_i and the
  k - 1 before it), which no UniPC fits: the corrector then starts as UniC-(k-1) (``unipc``) or
  as the predictor's update without its oldest output (``dpmpp``);
* SS (``s4s-ss``): two-stage single-step, kappa_1 = eps(x_{i-1}, sigma_{i-1}),
  kappa_2 = eps(x_{i-1} + a_i h_i kappa_1, sigma_{i-1}^(1-c_i) sigma_i^(c_i)),
  x_i = x_{i-1} + h_i (b_{1,i} kappa_1 + b_{2,i} kappa_2), h_i = sigma_i - sigma_{i-1}: the stage
  weight and position are relative to the step (the paper's absolute a, c are badly scaled across
  sigma in [0.002, 80]), initialised at DPM-Solver-2 (midpoint in log-SNR, Table 8's DPM-Solver (2S)).

S4S-Alt (Sec. 3.2, Algorithm 2) adds LD3's time steps and decoupled network times
(:mod:`gasbench.solvers.ld3`, S4S Appendix E, window from the smallest step gap as Eq. E.2) to
the LMS and alternates K = ``rounds`` times between a coefficient phase and a time-step phase
(Algorithm 2, coefficients first) on the same relaxed objective and offsets. The paper starts
the time steps from an LD3 schedule (Sec. 4.2: "initialized with iPNDM coefficients and LD3
discretization"): ``init_steps=ld3`` first fits :class:`~gasbench.solvers.ld3.LD3` on the
handcrafted solver of ``init`` (its own budget and first pairs), ``schedule`` starts from the
``schedule``.

Budgets (Appendix G.2, :meth:`paper_budget`): S4S 700 training pairs (latent: 600), batch 20,
10 epochs, 200 validation pairs; S4S-Alt 1,400 pairs (latent: 1,000), batch 40, 400 validation
pairs, K = 8 alternations, each phase "until convergence", which we take as one epoch, from an
LD3 schedule. The CPU default of S4S-Alt is K = 8 rounds of 10 iterations per phase from the
``schedule`` (160 iterations, the 2-minute budget of a built-in teacher's cell): the LD3 start
measures better on digits (docs/fidelity.md) but is a second fit, outside the per-iteration
pass count that ``--budget matched`` sizes fits by.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_solver
from gasbench.solvers.executor import LinComb, SolverTable, trace
from gasbench.solvers.handcrafted import ADAMS_BASHFORTH, dpmpp_update, step_order, unipc_update
from gasbench.solvers.ld3 import LD3, SPACES, WINDOWS_FROM, LearnedStepsMixin, learned_step_count, start_radius_ld3
from gasbench.solvers.learned import LOSSES, TRAINING_OPTIONS, LearnedSolver
from gasbench.solvers.schedules import make_sigmas

INITS = ("ipndm", "dpmpp", "unipc")
MAX_ORDER = {"ipndm": 4, "dpmpp": 3, "unipc": 3}
CORRECTOR_WIDTHS = ("k+1", "k")
INIT_STEPS = ("schedule", "ld3")


def newest_first_sum(weights, outputs):
    """sum_j weights[j] * outputs[-1 - j] over the window the history allows."""
    total = weights[0] * outputs[-1]
    for j in range(1, min(len(weights), len(outputs))):
        total = total + weights[j] * outputs[-1 - j]
    return total


def data_update(x, sigma, sigma_next, weights, outputs):
    """Table 7's data-prediction update in sigma space: r x + (1 - r) sum_j b_j D_{i-j}."""
    r = sigma_next / sigma
    return r * x + (1 - r) * newest_first_sum(weights, outputs)


def noise_lms_loop(model, x, sigmas, *, eval_sigmas, b):
    """Table 1's noise-prediction LMS (iPNDM's form); the network's eps at its input sigma."""
    eps = []
    for n in range(len(sigmas) - 1):
        eps.append((x - model(x, eval_sigmas[n])) / eval_sigmas[n])
        x = x + (sigmas[n + 1] - sigmas[n]) * newest_first_sum(b[n], eps)
    return x


def data_lms_loop(model, x, sigmas, *, eval_sigmas, b, corrector=None):
    """Table 7's data-prediction LMS; with ``corrector``, Table 1's LMS + PC (row i-1 re-solves
    x_i with D_i once it exists, before step i predicts from it)."""
    outputs, current, predicted = [], x, x
    for n in range(len(sigmas) - 1):
        outputs.append(model(predicted, eval_sigmas[n]))
        if corrector is not None and n > 0:
            current = data_update(current, sigmas[n - 1], sigmas[n], corrector[n - 1], outputs)
        else:
            current = predicted
        predicted = data_update(current, sigmas[n], sigmas[n + 1], b[n], outputs)
    return predicted


def single_step_loop(model, x, sigmas, *, b, a, c):
    """Table 1's SS solver with two stages (see the module docstring)."""
    for n in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[n], sigmas[n + 1]
        h = sigma_next - sigma
        kappa_1 = (x - model(x, sigma)) / sigma
        sigma_stage = sigma * (sigma_next / sigma) ** c[n]
        stage = x + a[n] * h * kappa_1
        kappa_2 = (stage - model(stage, sigma_stage)) / sigma_stage
        x = x + h * (b[n, 0] * kappa_1 + b[n, 1] * kappa_2)
    return x


def _newest_first(update: LinComb, newest: int, width: int, scale) -> torch.Tensor:
    """Coefficients of D_newest, D_newest-1, ... in a traced update, divided by ``scale``."""
    row = torch.zeros(width, dtype=torch.float64)
    for key, coef in update.terms.items():
        if key >= 0:
            row[newest - key] = torch.as_tensor(coef, dtype=torch.float64) / scale
    return row


def initial_coefficients(init: str, order: int, sigmas: torch.Tensor, corrector_width: int = 0):
    """(b, corrector or None): the handcrafted solver ``init`` on ``sigmas`` as S4S coefficients
    (newest output first), with the lower-order warm-up and final steps it uses; a corrector of
    ``corrector_width`` coefficients per step if that is not 0 (see the module docstring)."""
    steps = len(sigmas) - 1
    b = torch.zeros(steps, order, dtype=torch.float64)
    rows = torch.zeros(max(steps - 1, 0), corrector_width, dtype=torch.float64) if corrector_width else None
    x = LinComb({-1: 1.0})
    for n in range(steps):
        if init == "ipndm":
            weights = ADAMS_BASHFORTH[min(order, n + 1)]
            b[n, : len(weights)] = torch.tensor(weights, dtype=torch.float64)
            continue
        k = step_order(order, n, steps, lower_order_final=True)
        history = [LinComb({j: 1.0}) for j in range(n - k + 1, n + 1)]
        scale = 1 - sigmas[n + 1] / sigmas[n]
        window = sigmas[n - k + 1 : n + 1]
        if init == "dpmpp":
            b[n] = _newest_first(dpmpp_update(x, window, history, sigmas[n + 1]), n, order, scale)
        else:
            b[n] = _newest_first(unipc_update(x, window, history, sigmas[n + 1], "bh1"), n, order, scale)
            if corrector_width and n < steps - 1:
                c = min(k, corrector_width - 1)  # UniC-c weighs the c newest outputs and the fresh one
                fresh = LinComb({n + 1: 1.0})
                update = unipc_update(x, window[-c:], history[-c:], sigmas[n + 1], "bh1", denoised_next=fresh)
                rows[n] = _newest_first(update, n + 1, corrector_width, scale)
    if corrector_width and init != "unipc":  # the predictor's own update (its oldest output dropped if too wide)
        rows[:, 1:] = b[:-1, : corrector_width - 1]
    return b, rows


def lms_count(order: int, steps: int) -> int:
    """Learned LMS coefficients: min(k, i) per step i (Table 1: k(2N + 1 - k) / 2 for N >= k)."""
    return sum(min(order, n + 1) for n in range(steps))


class _S4SBase(LearnedSolver):
    """What every S4S variant shares: the relaxed objective's radius and the data budget."""

    validation_size = 200

    def coefficient_count(self, nfe: int) -> int:
        """m of Appendix G.2: the learned scalars that shape the sample."""
        raise NotImplementedError

    def start_radius(self, teacher, nfe: int) -> float:
        """Appendix G.2's r proportional to m^(-5/2), anchored at LD3's ball (module docstring)."""
        ratio = learned_step_count(nfe) / self.coefficient_count(nfe)
        return self.config["relax"] * start_radius_ld3(teacher, nfe) * ratio**2.5

    @classmethod
    def paper_budget(cls, teacher) -> dict:
        """Appendix G.2: LPIPS (Sec. 3.3), 700 training pairs (latent DMs: 600) in batches of 20
        for 10 epochs; 200 validation pairs (``validation_size``)."""
        pairs = 700 if teacher.modality == "pixel" else 600
        return {"loss": "lpips-vgg", "relax": 1.0, "train_size": pairs, "batch_size": 20, "iterations": 10 * pairs // 20}

    def schedule_sigmas(self, teacher, steps: int) -> torch.Tensor:
        return make_sigmas(self.resolved_config(teacher)["schedule"], steps, teacher)


S4S_BUDGET = {"relax": 1.0, **TRAINING_OPTIONS, "iterations": 350, "batch_size": 20, "train_size": 700}


@register_solver("s4s", aliases=("s4s-lms",), description="S4S (Frankel et al., 2025): learned time-dependent LMS coefficients")
class S4S(_S4SBase):
    """S4S's linear multistep solver (the paper's main S4S); see the module docstring."""

    name = "s4s"
    options = {"schedule": None, "init": "ipndm", "order": 3, **S4S_BUDGET}
    choices = {"init": INITS, "loss": LOSSES}

    def __init__(self, **options):
        super().__init__(**options)
        init, order = self.config["init"], self.config["order"]
        if not 1 <= order <= MAX_ORDER[init]:
            raise GasbenchError(f"{self.name} with init={init} supports order 1-{MAX_ORDER[init]}, got {order}.")

    def coefficient_count(self, nfe: int) -> int:
        return lms_count(self.config["order"], nfe)

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        b, _ = initial_coefficients(self.config["init"], self.config["order"], self.schedule_sigmas(teacher, nfe))
        return {"b": b}

    def lms_table(self, params, sigmas, eval_sigmas) -> SolverTable:
        if self.config["init"] == "ipndm":
            return trace(noise_lms_loop, sigmas, eval_sigmas=eval_sigmas, b=params["b"])
        return trace(data_lms_loop, sigmas, eval_sigmas=eval_sigmas, b=params["b"], corrector=params.get("corrector"))

    def table_from(self, params, teacher, nfe: int) -> SolverTable:
        sigmas = self.schedule_sigmas(teacher, nfe)
        return self.lms_table(params, sigmas, sigmas[:-1])


@register_solver("s4s-pc", description="S4S LMS + predictor-corrector: learned predictor and corrector coefficients (UniPC init)")
class S4SPredictorCorrector(S4S):
    """S4S's LMS + PC (Table 1, third row); see the module docstring."""

    name = "s4s-pc"
    options = {**S4S.options, "init": "unipc", "corrector_width": "k+1"}
    choices = {"init": ("unipc", "dpmpp"), "corrector_width": CORRECTOR_WIDTHS, "loss": LOSSES}

    def __init__(self, **options):
        super().__init__(**options)
        if self.corrector_width() < 2:
            raise GasbenchError(f"{self.name} with corrector_width=k needs order 2 or more, got {self.config['order']}.")

    def corrector_width(self) -> int:
        return self.config["order"] + (self.config["corrector_width"] == "k+1")

    def coefficient_count(self, nfe: int) -> int:
        """The predictor's, plus min(i + 2, width) corrector coefficients at every step i but the
        last (whose corrector would cost an NFE, as in UniPC): with width k, Table 1's
        k(2N + 1 - k) less that one missing coefficient."""
        return lms_count(self.config["order"], nfe) + sum(min(n + 2, self.corrector_width()) for n in range(nfe - 1))

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        b, corrector = initial_coefficients(self.config["init"], self.config["order"], self.schedule_sigmas(teacher, nfe),
                                            corrector_width=self.corrector_width())
        return {"b": b, "corrector": corrector}


@register_solver("s4s-ss", description="S4S single-step: learned two-stage coefficients (DPM-Solver-2 init), 2 NFE per step")
class S4SSingleStep(_S4SBase):
    """S4S's single-step solver (Table 1, second row; Appendix H.1); see the module docstring."""

    name = "s4s-ss"
    options = {"schedule": None, **S4S_BUDGET}

    def coefficient_count(self, nfe: int) -> int:
        return 4 * (nfe // 2)

    def _steps(self, nfe: int) -> int:
        if nfe < 2 or nfe % 2:
            raise GasbenchError(f"{self.name} makes 2 denoiser evaluations per step, so it cannot run at NFE {nfe}; use an even NFE.")
        return nfe // 2

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        sigmas = self.schedule_sigmas(teacher, self._steps(nfe))
        midpoints = torch.sqrt(sigmas[:-1] * sigmas[1:])  # DPM-Solver-2: half a log-SNR step
        steps = len(sigmas) - 1
        return {"b": torch.tensor([[0.0, 1.0]] * steps, dtype=torch.float64),
                "a": (midpoints - sigmas[:-1]) / (sigmas[1:] - sigmas[:-1]),
                "c": torch.full((steps,), 0.5, dtype=torch.float64)}

    def table_from(self, params, teacher, nfe: int) -> SolverTable:
        sigmas = self.schedule_sigmas(teacher, self._steps(nfe))
        return trace(single_step_loop, sigmas, b=params["b"], a=params["a"], c=params["c"])


@register_solver("s4s-alt", description="S4S-Alt: alternating S4S coefficients and LD3-style time steps (iPNDM init)")
class S4SAlt(LearnedStepsMixin, S4S):
    """S4S-Alt (Sec. 3.2, Algorithm 2); see the module docstring."""

    name = "s4s-alt"
    options = {**S4S.options, "space": "logsnr", "window": 0.5, "window_from": "steps", "init_steps": "schedule",
               "rounds": 8, "time_lr": 5e-3, "iterations": 160, "batch_size": 40, "train_size": 1400}
    choices = {"init": INITS, "space": SPACES, "window_from": WINDOWS_FROM, "init_steps": INIT_STEPS, "loss": LOSSES}
    validation_size = 400

    def __init__(self, **options):
        super().__init__(**options)
        self.ld3_steps: dict[str, torch.Tensor] | None = None  # what a fit with init_steps=ld3 starts from

    @classmethod
    def paper_budget(cls, teacher) -> dict:
        """Appendix G.2: 1,400 training pairs (latent DMs: 1,000) in batches of 40, K = 8
        alternations (phases "until convergence": one epoch each here), time steps from LD3
        (Sec. 4.2), LPIPS (Sec. 3.3); 400 validation pairs (``validation_size``)."""
        pairs = 1400 if teacher.modality == "pixel" else 1000
        return {"loss": "lpips-vgg", "relax": 1.0, "train_size": pairs, "batch_size": 40, "rounds": 8,
                "iterations": 2 * 8 * (pairs // 40), "init_steps": "ld3"}

    def coefficient_count(self, nfe: int) -> int:
        return lms_count(self.config["order"], nfe) + learned_step_count(nfe)

    def ld3_solver(self) -> LD3:
        """The LD3 ``init_steps=ld3`` starts from: on the handcrafted solver ``init`` names, in
        this solver's step space and window, so its steps carry over as they are."""
        cfg = self.config
        base = {"ipndm": "ipndm", "dpmpp": "dpmpp3m" if cfg["order"] == 3 else "dpmpp2m", "unipc": "unipc"}[cfg["init"]]
        shared = ("schedule", "space", "window", "window_from", "loss", "seed", "checkpointing")
        return LD3(base=base, order=cfg["order"], **{k: cfg[k] for k in shared})

    def fit(self, teacher, nfe, train, validation, progress=True, checkpoint_path=None, checkpoint_every=100):
        """With ``init_steps=ld3``, an LD3 fit on its own budget and the first of these pairs comes
        first (not when a checkpoint resumes: that holds the steps already); the record adds its
        passes and time."""
        start = None
        if self.config["init_steps"] == "ld3" and not (checkpoint_path is not None and Path(checkpoint_path).is_file()):
            ld3 = self.ld3_solver()
            first = [{k: v[:size] for k, v in data.items()}
                     for data, size in ((train, ld3.config["train_size"]), (validation, ld3.validation_size))]
            start = ld3.fit(teacher, nfe, *first, progress=progress)
            self.ld3_steps = ld3.params
        try:
            result = super().fit(teacher, nfe, train, validation, progress, checkpoint_path, checkpoint_every)
        finally:
            self.ld3_steps = None
        if start is not None:
            result.passes = {k: result.passes[k] + start.passes[k] for k in result.passes}
            result.validation_passes += start.validation_passes
            result.wall_time_s = round(result.wall_time_s + start.wall_time_s, 2)
            self.summary = result.as_dict()
        return result

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        steps = self.ld3_steps if self.ld3_steps is not None else self.initial_steps(teacher, nfe)
        b, _ = initial_coefficients(self.config["init"], self.config["order"], self.step_sigmas(steps, teacher)[0])
        return {"b": b, **steps}

    def table_from(self, params, teacher, nfe: int) -> SolverTable:
        sigmas, evaluation = self.step_sigmas(params, teacher)
        return self.lms_table(params, sigmas, evaluation)

    def make_optimizer(self, params):
        """Adam for the coefficients at ``lr``, and for the time steps at LD3's ``time_lr``."""
        times = [params["logits"], params["offsets"]]
        return torch.optim.Adam([{"params": [params["b"]], "lr": self.config["lr"]},
                                 {"params": times, "lr": self.config["time_lr"]}])

    def trainable(self, iteration: int) -> set[str]:
        """Algorithm 2: coefficient phase, then time-step phase, ``rounds`` times."""
        phase = max(1, self.config["iterations"] // (2 * self.config["rounds"]))
        return {"b"} if (iteration // phase) % 2 == 0 else {"logits", "offsets"}
