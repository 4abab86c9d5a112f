"""The distillation loop every learned solver trains with: GAS Appendix D without the adversarial
term. The student solves from the cached noise x_T, a distance compares its output with the
teacher's reference solution from the same noise (GAS Eq. 7), Adam with gradient-norm clipping
(:meth:`LearnedSolver.training_step`), an exponential moving average (EMA) of the parameters that
the solver samples with, and periodic checkpoints so a fit resumes where it stopped and ends with
the same parameters as an uninterrupted one.

Early stopping (``patience`` > 0, the CPU budget's rule for every method): every
``validate_every`` iterations the EMA parameters are scored on the first :data:`STOP_PAIRS`
validation pairs; the fit stops once ``patience`` checks in a row have not lowered the best of
those losses by :data:`MIN_IMPROVEMENT` (relative). ``iterations`` stays the cap. The papers' and
the matched budgets train their full iteration count (``patience = 0``), as the papers do.

What a fit trains (parameters, EMA, optimiser, random state, relaxed start offsets, pass counts)
lives in one :class:`_Run` for the length of :func:`fit`; the solver keeps only what its contract
reads afterwards: the EMA parameters, the summary, and the relaxed objective's radius and final
start offsets (:meth:`LearnedSolver.adopt`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from rich.progress import Progress, TextColumn

from gasbench.core import distributed
from gasbench.core.errors import GasbenchError
from gasbench.core.faults import fault_point
from gasbench.core.phases import phase
from gasbench.core.progress import Bars
from gasbench.core.records import write_atomic
from gasbench.teachers.base import NetworkPasses

CHECKPOINT_FORMAT = "gasbench.learned_solver_checkpoint.v2"
RECENT_LOSSES = 50  # the progress bar shows the mean loss of this many last iterations
STOP_PAIRS = 100  # validation pairs the early-stopping checks score (a tenth of GS's 1,000: cheap)
MIN_IMPROVEMENT = 0.01  # a check improves on the best when it is this much lower, relative


@dataclass
class FitResult:
    """What a fit did; also stored in ``solver.json`` and in the result record (``training``)."""

    iterations: int
    wall_time_s: float
    initial_validation_loss: float
    final_validation_loss: float
    loss: str
    train_size: int
    validation_size: int
    resumed_at: int = 0  # iterations already done by the checkpoint this fit resumed from
    budget: Optional[str] = None  # the named budget the options came from (gasbench run --budget)
    # per-sample student network passes spent (teachers.base.NetworkPasses): in the training
    # steps (forward, backward, total) and in scoring the validation pairs
    passes: dict[str, int] = field(default_factory=dict)
    validation_passes: int = 0
    # the teacher's reference solutions the fit read (train + validation pairs) and their passes
    teacher_solves: int = 0
    teacher_passes: int = 0
    # early stopping: the rule (patience 0: off), the iteration a fit stopped at (None: ran to
    # the cap) and the checks' (iteration, loss on the first STOP_PAIRS validation pairs)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    stopped_at: Optional[int] = None
    validation_curve: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_batch(size: int, batch_size: int, iteration: int, seed: int) -> torch.Tensor:
    """Indices of the training pairs of ``iteration``: shuffled epochs without replacement, the
    last incomplete batch dropped, as the GAS release's loader (``shuffle=True, drop_last=True``,
    src/gas/synt_data.py:68-72). Each epoch's permutation comes from its own seed, so a fit
    resumed mid-epoch draws the same batches as an uninterrupted one."""
    per_epoch = size // batch_size
    epoch, position = divmod(iteration, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size]


def ema_decay(decay: float, updates: int) -> float:
    """torch_ema's warm-up, which the GAS release uses (main.py:96; torch-ema 0.3): after
    ``updates`` updates (this one included) the decay is min(decay, (1 + updates) / (10 + updates)),
    so short CPU budgets still average over their last iterations rather than keep the
    initialisation."""
    return min(decay, (1 + updates) / (10 + updates))


def checks_without_improvement(losses: list[float]) -> int:
    """Checks since the last one that lowered the best loss so far by :data:`MIN_IMPROVEMENT`."""
    best, since = math.inf, 0
    for loss in losses:
        if loss < best * (1 - MIN_IMPROVEMENT):
            best, since = loss, 0
        else:
            since += 1
    return since


@contextlib.contextmanager
def counting_passes(teacher, passes: NetworkPasses):
    """Count the network passes of ``teacher``'s denoiser calls into ``passes`` meanwhile."""
    previous, teacher.passes = teacher.passes, passes
    try:
        yield passes
    finally:
        teacher.passes = previous


def _check_data(solver, train: dict, validation: dict) -> int:
    """The batch size of a fit on ``train``; one message for empty data or too many processes."""
    for name, data in (("train", train), ("validation", validation)):
        missing = {"noise", "x0"} - set(data)
        if missing or len(data["x0"]) == 0:
            raise GasbenchError(f"{solver.name} fit needs non-empty {name} data with noise and x0 (missing: {sorted(missing)}).")
    batch_size = min(solver.config["batch_size"], len(train["x0"]))
    if batch_size < distributed.world_size():
        raise GasbenchError(
            f"{solver.name} fit: a batch of {batch_size} pairs cannot be split over {distributed.world_size()} processes; "
            f"raise batch_size (--solver-arg batch_size=...) or start fewer processes."
        )
    return batch_size


class _Run:
    """One fit's training state, from the initial parameters (or a checkpoint) to the EMA."""

    def __init__(self, solver, teacher, nfe: int, train: dict[str, torch.Tensor]):
        cfg = solver.config
        self.solver, self.started = solver, time.perf_counter()
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in solver.parameters_for(teacher, nfe).items()}
        self.ema = {k: v.detach().clone() for k, v in self.params.items()}
        self.optimizer = solver.make_optimizer(self.params)
        self.generator = torch.Generator().manual_seed(cfg["seed"])
        solver.start_training(teacher, nfe)
        self.radius = float(solver.start_radius(teacher, nfe))
        self.offsets = torch.zeros(train["noise"].shape, dtype=torch.float64) if self.radius > 0 else None
        self.iteration, self.recent, self.initial_loss, self.elapsed = 0, [], None, 0.0
        self.curve, self.stopped_at = [], None
        self.passes, self.validation_passes = NetworkPasses(), NetworkPasses()
        self.identity = json.dumps(solver._identity(teacher, nfe, budget=False), sort_keys=True)

    def wall_time(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``, which must be of this configuration."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # written whole: damaged since
            raise GasbenchError(f"checkpoint {path} cannot be read ({exc}); delete it to start the fit over.") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != self.identity:
            raise GasbenchError(f"checkpoint {path} was written for another solver configuration; delete it to start over.")
        with torch.no_grad():
            for k in self.params:
                self.params[k].copy_(state["params"][k])
                self.ema[k].copy_(state["ema"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.solver.load_training_state(state.get("auxiliary", {}))
        if self.offsets is not None:
            self.offsets.copy_(state["start_offsets"])
        self.generator.set_state(state["generator"])
        self.iteration, self.recent = state["iteration"], list(state["recent"])
        self.passes = NetworkPasses(**state["passes"])
        self.validation_passes = NetworkPasses(**state["validation_passes"])
        self.initial_loss, self.elapsed = state["initial_validation_loss"], state["elapsed_s"]
        self.curve, self.stopped_at = [list(point) for point in state["curve"]], state["stopped_at"]

    def save(self, path: Optional[Path], iteration: int) -> None:
        """Checkpoint after ``iteration`` iterations (rank 0 only), atomically."""
        if path is None or not distributed.is_main():
            return
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "identity": self.identity, "iteration": iteration,
                    "params": {k: v.detach() for k, v in self.params.items()}, "ema": self.ema,
                    "optimizer": self.optimizer.state_dict(), "auxiliary": self.solver.training_state(),
                    "start_offsets": self.offsets, "passes": asdict(self.passes),
                    "validation_passes": asdict(self.validation_passes),
                    "generator": self.generator.get_state(), "recent": self.recent,
                    "initial_validation_loss": self.initial_loss, "elapsed_s": self.wall_time(),
                    "curve": self.curve, "stopped_at": self.stopped_at}, buffer)
        write_atomic(Path(path), buffer.getvalue())

    def step(self, teacher, nfe: int, batch: dict[str, torch.Tensor], iteration: int) -> float:
        """One training iteration and the EMA update after it; returns the progress bar's loss."""
        with counting_passes(teacher, self.passes):
            value = self.solver.training_step(self.params, self.optimizer, teacher, nfe, batch, self.generator,
                                              iteration, offsets=self.offsets)
        decay = ema_decay(self.solver.config["ema"], iteration + 1)
        with torch.no_grad():
            for k in self.params:
                self.ema[k].lerp_(self.params[k], 1 - decay)
        self.recent = (self.recent + [value])[-RECENT_LOSSES:]
        return sum(self.recent) / len(self.recent)

    def check(self, teacher, nfe: int, validation: dict[str, torch.Tensor], iterations: int) -> bool:
        """After ``iterations`` iterations: score the EMA for early stopping when a check is due;
        True when the fit should stop here."""
        cfg = self.solver.config
        every, patience = cfg["validate_every"], cfg["patience"]
        if every <= 0 or iterations % every:
            return False
        subset = {k: v[:STOP_PAIRS] for k, v in validation.items()}
        with phase("validation"), counting_passes(teacher, self.validation_passes):
            loss = self.solver.evaluate(self.ema, teacher, nfe, subset)
        self.curve.append([iterations, loss])
        return patience > 0 and checks_without_improvement([point[1] for point in self.curve]) >= patience


def fit(solver, teacher, nfe: int, train: dict[str, torch.Tensor], validation: dict[str, torch.Tensor],
        progress: Union[bool, Progress] = True, checkpoint_path: Optional[Path] = None,
        checkpoint_every: int = 100) -> FitResult:
    """Train ``solver``'s parameters for ``nfe`` on ``train`` and give it their EMA; see
    :meth:`LearnedSolver.fit` for the arguments."""
    cfg = solver.config
    batch_size = _check_data(solver, train, validation)
    run = _Run(solver, teacher, nfe, train)
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        run.resume(checkpoint_path)
    resumed_at = run.iteration
    if run.initial_loss is None:
        with counting_passes(teacher, run.validation_passes):
            with phase("validation"):
                run.initial_loss = solver.evaluate(run.params, teacher, nfe, validation)
    size = len(train["x0"])
    if isinstance(progress, Progress):  # a caller's live display (gasbench run)
        bar, display = progress, contextlib.nullcontext()
    else:
        bar = display = Bars(TextColumn("loss {task.fields[loss]:.4f}"), enabled=bool(progress) and distributed.is_main())
    with display:
        task = bar.add_task(f"[bold]fit {solver.name} NFE {nfe}", total=cfg["iterations"], completed=resumed_at, loss=math.nan)
        cap = cfg["iterations"] if run.stopped_at is None else resumed_at  # a stopped fit stays stopped
        for iteration in range(resumed_at, cap):
            index = distributed.shard(epoch_batch(size, batch_size, iteration, cfg["seed"]))
            batch = {**{k: v[index] for k, v in train.items()}, "index": index}
            with phase("fit_step"):
                loss = run.step(teacher, nfe, batch, iteration)
            bar.update(task, advance=1, loss=loss)
            if run.check(teacher, nfe, validation, iteration + 1):
                run.stopped_at = iteration + 1
                bar.update(task, total=iteration + 1)
                break
            if (iteration + 1) % checkpoint_every == 0 and iteration + 1 < cfg["iterations"]:
                run.save(checkpoint_path, iteration + 1)
            fault_point("fit-iteration")
    iterations = run.stopped_at or max(resumed_at, cfg["iterations"])
    run.save(checkpoint_path, iterations)
    with counting_passes(teacher, run.validation_passes):
        with phase("validation"):
            final_loss = solver.evaluate(run.ema, teacher, nfe, validation)
    forward, backward = distributed.sum_over_ranks([run.passes.forward, run.passes.backward])  # each rank its slice
    solves = size + len(validation["x0"])
    reference = getattr(teacher, "reference", None)
    result = FitResult(
        iterations=iterations, wall_time_s=round(run.wall_time(), 2),
        initial_validation_loss=run.initial_loss, final_validation_loss=final_loss,
        loss=cfg["loss"], train_size=size, validation_size=len(validation["x0"]), resumed_at=resumed_at,
        budget=solver.budget,
        passes={"forward": int(forward), "backward": int(backward), "total": int(forward + backward)},
        validation_passes=run.validation_passes.forward, teacher_solves=solves,
        teacher_passes=solves * reference.nfe if reference is not None else 0,
        early_stopping={"patience": cfg["patience"], "validate_every": cfg["validate_every"], "cap": cfg["iterations"],
                        "pairs": min(STOP_PAIRS, len(validation["x0"])), "min_improvement": MIN_IMPROVEMENT},
        stopped_at=run.stopped_at, validation_curve=run.curve,
    )
    solver.adopt(run.ema, teacher, nfe, result, run.radius, run.offsets)
    return result
