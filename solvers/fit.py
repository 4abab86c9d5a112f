"""The distillation loop every learned solver trains with: GAS Appendix D without the adversarial
term. The student solves from the cached noise x_T, a distance compares its output with the
teacher's reference solution from the same noise (GAS Eq. 7), Adam with gradient-norm clipping
(:meth:`LearnedSolver.training_step`), an exponential moving average (EMA) of the parameters that
the solver samples with, and periodic checkpoints so a fit resumes where it stopped and ends with
the same parameters as an uninterrupted one.

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
from gasbench.core.progress import Bars
from gasbench.core.records import write_atomic
from gasbench.teachers.base import NetworkPasses

CHECKPOINT_FORMAT = "gasbench.learned_solver_checkpoint.v2"
RECENT_LOSSES = 50  # the progress bar shows the mean loss of this many last iterations


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
                    "initial_validation_loss": self.initial_loss, "elapsed_s": self.wall_time()}, buffer)
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
            run.initial_loss = solver.evaluate(run.params, teacher, nfe, validation)
    size = len(train["x0"])
    if isinstance(progress, Progress):  # a caller's live display (gasbench run)
        bar, display = progress, contextlib.nullcontext()
    else:
        bar = display = Bars(TextColumn("loss {task.fields[loss]:.4f}"), enabled=bool(progress) and distributed.is_main())
    with display:
        task = bar.add_task(f"[bold]fit {solver.name} NFE {nfe}", total=cfg["iterations"], completed=resumed_at, loss=math.nan)
        for iteration in range(resumed_at, cfg["iterations"]):
            index = distributed.shard(epoch_batch(size, batch_size, iteration, cfg["seed"]))
            batch = {**{k: v[index] for k, v in train.items()}, "index": index}
            bar.update(task, advance=1, loss=run.step(teacher, nfe, batch, iteration))
            if (iteration + 1) % checkpoint_every == 0 and iteration + 1 < cfg["iterations"]:
                run.save(checkpoint_path, iteration + 1)
            fault_point("fit-iteration")
    iterations = max(resumed_at, cfg["iterations"])
    run.save(checkpoint_path, iterations)
    with counting_passes(teacher, run.validation_passes):
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
    )
    solver.adopt(run.ema, teacher, nfe, result, run.radius, run.offsets)
    return result
