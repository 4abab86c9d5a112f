"""The contract every learned solver keeps: parameters -> a differentiable table, the loss and
gradient step one training iteration runs, and a saved state (``solver.safetensors`` +
``solver.json``); the loop that trains them is :mod:`gasbench.solvers.fit`.

A learned method (GS, GAS, S4S, LD3, DLMS, ...) subclasses :class:`LearnedSolver` and implements
:meth:`~LearnedSolver.parameters_for` and :meth:`~LearnedSolver.table_from`; the executor, the
teacher-trajectory data and the training loop are shared.

Losses: ``l1`` (mean absolute error in sample space; GAS for latent teachers), ``l2`` (mean
squared error) and ``lpips-vgg`` (LPIPS-VGG on ``teacher.decode`` images upsampled to 224, GAS
for pixel teachers). The built-in 8x8 teachers default to L1: LPIPS-VGG at 224 costs about a
second per image pair on a CPU, a hundred times the student's own solve.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional, Union

import torch
from rich.progress import Progress
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch.utils.checkpoint import checkpoint

from gasbench.core import distributed
from gasbench.core.errors import GasbenchError
from gasbench.core.phases import phase
from gasbench.core.records import write_atomic
from gasbench.solvers.base import Solver
from gasbench.solvers.executor import AdaptiveTable, SolverTable, Table, execute, per_sample
from gasbench.solvers.fit import FitResult, fit

STATE_FILE = "solver.safetensors"
CONFIG_FILE = "solver.json"
STATE_FORMAT = "gasbench.learned_solver.v1"
LOSSES = ("l1", "l2", "lpips-vgg")
# Options every learned solver has: the distillation budget. The paper's values are GAS Appendix
# D.4 (Adam lr 1e-3, clip 1.0, EMA 0.999, batch 24, 1,400 training pairs, LPIPS, 10k iterations);
# ``iterations`` and ``lr`` are CPU defaults for the built-in teachers that each method may
# override (see gasbench.solvers.gs for the measured budget).
TRAINING_OPTIONS = {
    "iterations": 300,
    "batch_size": 24,
    "lr": 1e-3,
    "ema": 0.999,
    "grad_clip": 1.0,
    "loss": "l1",
    "train_size": 1400,
    "seed": 0,
    "checkpointing": False,
    # early stopping (gasbench.solvers.fit): checks every validate_every iterations (0: none), and
    # the fit stops after patience checks without improvement (0: runs to `iterations`)
    "validate_every": 50,
    "patience": 2,
}


@lru_cache(maxsize=2)
def _lpips_vgg(device: torch.device):
    """LPIPS-VGG on the teacher's device: at 224 pixels it costs more than a small teacher."""
    from gasbench.core.lpips_metric import load_lpips

    return load_lpips("vgg")[0].to(device)


def distillation_loss(name: str, student: torch.Tensor, target: torch.Tensor, teacher) -> torch.Tensor:
    """Mean distance d(student, teacher) over a batch (GAS Eq. 7)."""
    if name == "l1":
        return (student - target).abs().mean()
    if name == "l2":
        return (student - target).pow(2).mean()
    if name == "lpips-vgg":
        from gasbench.core.lpips_metric import lpips_distance

        model = _lpips_vgg(torch.device(getattr(teacher, "device", "cpu")))
        return lpips_distance(teacher.decode(student), teacher.decode(target), model, resize_to=224).mean().to(student.device)
    raise GasbenchError(f"unknown distillation loss {name!r}; choose one of {', '.join(LOSSES)}.")


# The relaxed objective (LD3's soft teacher, S4S Eq. 7 / 9): each training pair's start point
# moves inside an L2 ball around its noise by projected, normalised gradient steps of this
# fraction of the ball's radius per visit (normalised, so the step does not depend on the loss's
# scale, which differs between L1, L2 and LPIPS).
RELAXED_STEP = 0.5


def _norms(batch: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms (B,), floored so a zero vector divides safely."""
    return batch.flatten(1).norm(dim=1).clamp_min(1e-30)


def project_to_ball(offsets: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-sample projection of ``offsets`` (B, ...) onto the L2 ball of ``radius`` (S4S Alg. 1, line 6)."""
    return offsets * per_sample(torch.clamp(radius / _norms(offsets), max=1.0), offsets)


class LearnedSolver(Solver):
    """A solver whose table comes from trained parameters.

    Subclasses implement :meth:`parameters_for` (the initial parameters) and :meth:`table_from`
    (their table, differentiable). :meth:`fit` trains them on teacher data; :meth:`table` then
    returns the table of the EMA parameters, and before any fit the table of the initial ones.
    One instance holds the parameters of one (teacher, NFE).
    """

    learned = True
    choices = {"loss": LOSSES}
    # validation pairs a fit is scored on (None: the trajectory cache's default, 1,000)
    validation_size: ClassVar[Optional[int]] = None

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.budget: Optional[str] = None  # the named budget its options came from, as recorded
        self.params: Optional[dict[str, torch.Tensor]] = None
        self.summary: dict[str, Any] = {}
        self.trained_for: Optional[tuple[str, int]] = None  # (teacher name, NFE) of self.params
        self._state_identity: dict[str, Any] = {}  # what solver.json records about them
        # the relaxed objective of the last fit: its radius and each training pair's final offset
        self.radius = 0.0
        self.start_offsets: Optional[torch.Tensor] = None

    @classmethod
    def paper_budget(cls, teacher) -> dict[str, Any]:
        """The options under which the method trains as its own paper and released code specify
        on ``teacher`` (``gasbench run --budget paper``); the class's ``options`` are the CPU budget
        of the built-in teachers. A method without stated paper settings keeps its defaults."""
        return {}

    def passes_per_iteration(self, nfe: int) -> int:
        """Student network passes (forward + backward, per sample) one training iteration spends
        at the configured batch: every one of the ``nfe`` evaluations of the batch's differentiable
        solve, forward and backward (GS, S4S, LD3). Methods with other passes override it; a test
        checks it against the count of a real iteration for every registered method."""
        return 2 * nfe * min(self.config["batch_size"], self.config["train_size"])

    @abstractmethod
    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        """The parameters before training (float64 tensors)."""

    @abstractmethod
    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> Table:
        """The table of ``params``, differentiable in them."""

    def table(self, teacher, nfe: int) -> Table:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        if self.params is None:
            params = self.parameters_for(teacher, nfe)
        elif self.trained_for != (teacher.name, nfe):
            raise GasbenchError(
                f"this {self.name} solver holds parameters trained for teacher '{self.trained_for[0]}' at "
                f"NFE {self.trained_for[1]}, not '{teacher.name}' at NFE {nfe}; fit or load one per teacher and NFE."
            )
        else:
            params = self.params
        with torch.no_grad():
            table = self.table_from({k: v.detach() for k, v in params.items()}, teacher, nfe)
        if isinstance(table, AdaptiveTable):  # rows chosen while sampling (DLMS)
            return table
        return SolverTable(table.a.detach(), table.c.detach(), table.sigmas.detach(), table.sigma_final)

    # --- the objective -------------------------------------------------------------------------

    def solve(self, params, teacher, nfe: int, noise: torch.Tensor, cond, checkpointing: bool = False) -> torch.Tensor:
        """The student's samples from unit ``noise``, differentiable in ``params``.

        With ``checkpointing`` each denoiser call is recomputed in the backward pass instead of
        keeping its activations, so memory does not grow with NFE x batch (one more forward pass
        per evaluation).
        """
        table = self.table_from(params, teacher, nfe)
        denoise = teacher.denoiser(cond)
        if checkpointing:
            plain = denoise
            denoise = lambda x, sigma: checkpoint(plain, x, sigma, use_reentrant=False)  # noqa: E731
        return execute(table, denoise, noise.to(torch.float64) * teacher.sigma_max).float()

    def loss(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor], checkpointing: bool = False) -> torch.Tensor:
        """The distillation loss of ``params`` on a batch of (noise, x0[, cond])."""
        student = self.solve(params, teacher, nfe, batch["noise"], batch.get("cond"), checkpointing)
        return distillation_loss(self.config["loss"], student, batch["x0"], teacher)

    def training_loss(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor], generator: torch.Generator,
                      checkpointing: bool = False) -> torch.Tensor:
        """The loss one training iteration minimises; the distillation loss unless a method adds
        terms (GAS: the adversarial one, drawing fresh noise from ``generator``)."""
        return self.loss(params, teacher, nfe, batch, checkpointing)

    def training_step(self, params, optimizer: torch.optim.Optimizer, teacher, nfe: int,
                      batch: dict[str, torch.Tensor], generator: torch.Generator, iteration: int,
                      offsets: Optional[torch.Tensor] = None) -> float:
        """One optimiser update of ``params`` on ``batch`` (:meth:`gradient_step` on
        :meth:`training_loss`); returns the loss. What the fit runs each iteration and
        `gasbench bench training` times. With the relaxed objective, ``offsets`` holds each
        training pair's start offset: the student starts from the batch's noise plus its pairs'
        offsets, and those take a projected step too (in place)."""
        shift = None
        if offsets is not None and "index" in batch:
            shift = offsets[batch["index"]].clone().requires_grad_(True)
            batch = {**batch, "noise": batch["noise"].to(shift.dtype) + shift}
        loss = self.training_loss(params, teacher, nfe, batch, generator, self.config["checkpointing"])
        value = self.gradient_step(params, optimizer, [(loss, "")], iteration, nfe, len(batch["noise"]))
        if shift is not None and shift.grad is not None:
            moved = self.move_start_offsets(params, teacher, nfe, batch, shift)
            # each process moved its slice's offsets; every process keeps all of them
            offsets[distributed.gather(batch["index"])] = distributed.gather(moved)
        return value

    def gradient_step(self, params, optimizer: torch.optim.Optimizer, losses: Iterable[tuple[torch.Tensor, str]],
                      iteration: int, nfe: int, batch_size: int) -> float:
        """Backpropagate each of ``losses`` as it comes ((loss, where) pairs: DLMS yields one per
        step, Algorithm 1), stopping with one message at a NaN or inf, then one clipped optimiser
        step; returns the sum of the losses. Parameters outside :meth:`trainable` keep their
        values. In a distributed fit ``batch_size`` is this process's slice and the gradients are
        averaged over the whole batch before clipping."""
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for loss, where in losses:
            value = self.finite_loss(loss, iteration, nfe, where)
            with phase("backward"):
                loss.backward()
            total += value
        trainable = self.trainable(iteration)
        if trainable is not None:  # Adam and RMSprop leave parameters without a gradient as they are
            for name, p in params.items():
                if name not in trainable:
                    p.grad = None
        distributed.average_gradients(params.values(), batch_size)
        torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], self.config["grad_clip"])
        optimizer.step()
        return total

    def move_start_offsets(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor],
                           shift: torch.Tensor) -> torch.Tensor:
        """The batch's start offsets after this iteration (relaxed objective): ``shift`` holds
        them and, in ``.grad``, the loss gradient; ``batch`` is the shifted batch and ``params``
        are already updated. S4S Alg. 1, lines 5-6: a projected gradient step, normalised to
        ``RELAXED_STEP`` x the radius (LD3 overrides it with its official rule)."""
        radius = float(self.start_radius(teacher, nfe))
        direction = shift.grad / per_sample(_norms(shift.grad), shift.grad)
        return project_to_ball(shift.detach() - RELAXED_STEP * radius * direction, radius)

    def finite_loss(self, loss: torch.Tensor, iteration: int, nfe: int, where: str = "") -> float:
        """The loss as a float; one clear message (and a stop) if it became NaN or inf."""
        value = float(loss.detach())
        if not math.isfinite(value):
            raise GasbenchError(
                f"{self.name} training loss became {value} at iteration {iteration + 1}{where} (NFE {nfe}); "
                f"lower the learning rate (--solver-arg lr=..., now {self.config['lr']}), or check the teacher "
                f"data for NaN (`gasbench data info`); a checkpoint, if any, holds the last good state."
            )
        return value

    def make_optimizer(self, params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
        """The optimiser of a fit: Adam at ``lr`` (GAS Appendix D.4); LD3 uses RMSprop."""
        return torch.optim.Adam(list(params.values()), lr=self.config["lr"])

    def trainable(self, iteration: int) -> Optional[set[str]]:
        """Names of the parameters iteration ``iteration`` updates; None: all of them (S4S-Alt
        alternates between its coefficients and its time steps)."""
        return None

    def start_radius(self, teacher, nfe: int) -> float:
        """Radius, in unit-noise L2 norm, of the ball the student's start point may move in during
        training (the relaxed objective of LD3 and S4S Eq. 7); 0 for the exact objective."""
        return 0.0

    def start_training(self, teacher, nfe: int) -> None:
        """Set up what a fit trains besides the solver's parameters (GAS: its discriminator)."""

    def training_state(self) -> dict[str, Any]:
        """That auxiliary state, for checkpoints (tensors and plain containers only)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned."""

    @torch.no_grad()
    def evaluate(self, params, teacher, nfe: int, data: dict[str, torch.Tensor], batch_size: int = 250) -> float:
        """Mean distillation loss over ``data`` (the validation pairs), in batches."""
        total, count = 0.0, len(data["x0"])
        for start in range(0, count, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in data.items()}
            total += float(self.loss(params, teacher, nfe, batch)) * len(batch["x0"])
        return total / count

    # --- training ------------------------------------------------------------------------------

    def fit(self, teacher, nfe: int, train: dict[str, torch.Tensor], validation: dict[str, torch.Tensor],
            progress: Union[bool, Progress] = True, checkpoint_path: Optional[Path] = None,
            checkpoint_every: int = 100) -> FitResult:
        """Train the parameters for ``nfe`` on ``train`` and keep their EMA as the solver's state
        (the loop: :func:`gasbench.solvers.fit.fit`).

        ``train`` / ``validation``: dicts of ``noise`` (unit noise), ``x0`` (the teacher's solution)
        and, for conditional teachers, ``cond``, as :meth:`TrajectoryCache.load` returns them.
        ``progress``: True/False for an own progress bar, or a running rich Progress to add a
        task to. ``checkpoint_path``: where to checkpoint every ``checkpoint_every`` iterations
        and at the end; an existing checkpoint of the same configuration is resumed (the budget
        may have grown), one of another configuration is an error.

        Under torchrun (:mod:`gasbench.core.distributed`) every process draws the same batch, trains on
        its contiguous slice, and the gradients are averaged over the whole batch before clipping,
        so all processes keep the same parameters, equal to a single-process fit's up to the
        floating-point summation order; only rank 0 writes checkpoints. The validation losses are
        computed by each process on all validation pairs.
        """
        return fit(self, teacher, nfe, train, validation, progress, checkpoint_path, checkpoint_every)

    def adopt(self, params: dict[str, torch.Tensor], teacher, nfe: int, result: FitResult, radius: float = 0.0,
              offsets: Optional[torch.Tensor] = None) -> None:
        """Keep what a fit of ``nfe`` on ``teacher`` ended with: the (EMA) parameters the solver
        samples with, its summary, and the relaxed objective's radius and final start offsets."""
        self.params, self.trained_for = params, (teacher.name, nfe)
        self._state_identity = self._identity(teacher, nfe)
        self.summary = result.as_dict()
        self.radius, self.start_offsets = radius, offsets

    def _identity(self, teacher, nfe: int, budget: bool = True) -> dict[str, Any]:
        """What a saved state (``budget``) or a resumable checkpoint (not: the budget may grow) must
        match: solver, teacher, configuration and the solver's code (an edited method refits)."""
        config = self.resolved_config(teacher)
        if not budget:
            config.pop("iterations")
        return {"solver": self.name, "nfe": nfe, "teacher": teacher.name, "code_sha256": type(self).code_sha256(),
                "teacher_sha256": getattr(teacher, "weights_sha256", None), **config}

    def steps(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> dict[str, torch.Tensor]:
        """Named per-step noise levels of ``params`` for `gasbench show` (a method adds its own,
        e.g. GS's integration steps)."""
        with torch.no_grad():
            return {"evaluation sigma": self.table_from(params, teacher, nfe).sigmas}

    # --- saved state ---------------------------------------------------------------------------

    def save_state(self, directory: Path, teacher=None, nfe: Optional[int] = None) -> None:
        """Write ``solver.safetensors`` (the EMA parameters) and ``solver.json`` (configuration,
        teacher, NFE and training summary), each atomically. ``teacher`` and ``nfe``, if given,
        must be the ones the parameters were trained for."""
        if self.params is None:
            raise GasbenchError(f"solver '{self.name}' has no trained parameters to save; fit it first.")
        if teacher is not None and (teacher.name, self.trained_for[1] if nfe is None else nfe) != self.trained_for:
            raise GasbenchError(f"the parameters were trained for {self.trained_for}, not ({teacher.name!r}, {nfe}).")
        directory = Path(directory)
        write_atomic(directory / STATE_FILE, save({k: v.detach().contiguous() for k, v in self.params.items()}))
        blob = {"format": STATE_FORMAT, **self._state_identity, "training": self.summary}
        write_atomic(directory / CONFIG_FILE, (json.dumps(blob, indent=2, sort_keys=True) + "\n").encode())

    def load_state(self, directory: Path, teacher=None, nfe: Optional[int] = None) -> bool:
        """Load a state saved by :meth:`save_state`; False when there is none or it was written for
        another configuration (options, or the given ``teacher`` / ``nfe``)."""
        directory = Path(directory)
        try:
            blob = json.loads((directory / CONFIG_FILE).read_text())
            params = load_file(str(directory / STATE_FILE))
        except (OSError, ValueError, SafetensorError):  # a damaged state is refitted
            return False
        training = blob.pop("training", {})
        if blob.pop("format", None) != STATE_FORMAT:
            return False
        if teacher is not None:
            if blob != json.loads(json.dumps(self._identity(teacher, nfe if nfe is not None else blob.get("nfe")))):
                return False
            expected = self.parameters_for(teacher, blob["nfe"])
            if set(params) != set(expected) or any(params[k].shape != expected[k].shape for k in expected):
                return False
        else:
            saved = {k: v for k, v in blob.items() if k in self.options}
            mine = json.loads(json.dumps({k: v for k, v in self.config.items() if v is not None}))
            if any(saved.get(k) != v for k, v in mine.items()) or (nfe is not None and blob.get("nfe") != nfe):
                return False
        self.params, self.summary = params, training
        self.trained_for = (blob["teacher"], blob["nfe"])
        self._state_identity = blob
        return True

