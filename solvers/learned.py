"""What every learned solver shares: parameters -> a differentiable table, one distillation loop,
and a saved state (``solver.safetensors`` + ``solver.json``).

A learned method subclasses :class:`LearnedSolver` and implements :meth:`init_parameters` and
:meth:`table_from`; the executor, the teacher-trajectory data and the training loop are shared.
The loop follows GAS Appendix D (Algorithm 1 without the adversarial term): the student solves
from the cached noise x_T, the loss compares its output with the teacher's reference solution
from the same noise, Adam with gradient clipping, an exponential moving average of the
parameters, and periodic checkpoints so a fit resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, Optional, Union

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save
from torch.utils.checkpoint import checkpoint

from gasbench.errors import GasbenchError
from gasbench.records import write_atomic
from gasbench.solvers.base import Solver
from gasbench.solvers.executor import SolverTable, execute

STATE_FILE = "solver.safetensors"
CONFIG_FILE = "solver.json"
CHECKPOINT_FORMAT = "gasbench.learned_solver_checkpoint.v1"
# options every learned solver has: the distillation budget (GAS Appendix D; CPU defaults for the
# built-in teachers are each method's own)
TRAINING_OPTIONS = {
    "iterations": 300,
    "batch_size": 24,
    "lr": 1e-3,
    "ema": 0.999,
    "grad_clip": 1.0,
    "loss": "l1",
    "train_size": 1400,
    "seed": 0,
    "checkpointing": True,
}
LOSSES = ("l1", "l2", "lpips-vgg")


def distillation_loss(name: str, student: torch.Tensor, target: torch.Tensor, teacher) -> torch.Tensor:
    """Mean distance between student and teacher outputs: L1 / L2 in sample space (GAS uses L1
    for latent teachers) or LPIPS-VGG on decoded images upsampled to 224 (GAS, pixel teachers)."""
    if name == "l1":
        return (student - target).abs().mean()
    if name == "l2":
        return (student - target).pow(2).flatten(1).sum(1).sqrt().mean()
    from gasbench.lpips_metric import lpips_distance
    from gasbench.metrics import lpips_model

    decode = lambda x: ((x + 1) / 2).clamp(0, 1)  # noqa: E731  (differentiable teacher.decode for pixels)
    return lpips_distance(decode(student), decode(target), lpips_model("vgg")[0], resize_to=224).mean()


class LearnedSolver(Solver):
    """A solver whose table comes from trained parameters.

    ``fit`` trains them on teacher data; ``table`` then returns the table of the EMA parameters,
    and before any fit the table of the initial parameters (for GS: DPM-Solver++(3M)).
    """

    learned = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.params: Optional[dict[str, torch.Tensor]] = None
        self.summary: dict[str, Any] = {}
        if self.config.get("loss", "l1") not in LOSSES:
            raise GasbenchError(f"solver '{self.name}' loss must be one of {', '.join(LOSSES)}, got {self.config['loss']!r}.")

    @abstractmethod
    def init_parameters(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        """The parameters before training (float64 leaf tensors)."""

    @abstractmethod
    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> SolverTable:
        """The table of ``params``; differentiable in them."""

    def table(self, teacher, nfe: int) -> SolverTable:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        params = self.params if self.params is not None else self.init_parameters(teacher, nfe)
        with torch.no_grad():
            table = self.table_from(params, teacher, nfe)
        return SolverTable(table.a.detach(), table.c.detach(), table.sigmas.detach(), table.sigma_final)

    # --- training -------------------------------------------------------------------------------

    def solve(self, params, teacher, nfe: int, noise: torch.Tensor, cond) -> torch.Tensor:
        """The student's output from unit noise, differentiable in ``params``; with
        ``checkpointing`` each denoiser call is recomputed in the backward pass, so activation
        memory does not grow with NFE."""
        table = self.table_from(params, teacher, nfe)
        denoise = teacher.denoiser(cond)
        if self.config["checkpointing"]:
            plain = denoise
            denoise = lambda x, sigma: checkpoint(plain, x, sigma, use_reentrant=False)  # noqa: E731
        return execute(table, denoise, noise.to(torch.float64) * teacher.sigma_max).float()

    def loss(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        student = self.solve(params, teacher, nfe, batch["noise"], batch.get("cond"))
        return distillation_loss(self.config["loss"], student, batch["x0"], teacher)

    @torch.no_grad()
    def evaluate(self, params, teacher, nfe: int, data: dict[str, torch.Tensor], batch_size: int = 250) -> float:
        """Mean distillation loss over ``data`` (validation), in batches."""
        total, count = 0.0, len(data["x0"])
        for start in range(0, count, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in data.items()}
            total += float(self.loss(params, teacher, nfe, batch)) * len(batch["x0"])
        return total / count

    def fit(self, teacher, nfe: int, train: dict[str, torch.Tensor], validation: dict[str, torch.Tensor],
            progress: Union[bool, Progress] = True, checkpoint_path: Optional[Path] = None) -> dict[str, Any]:
        """Train the parameters for ``nfe`` on ``train`` (dict of noise, x0, cond) and keep the EMA.

        ``progress`` is True/False for an own progress bar, or a running rich Progress to add a task to.
        """
        cfg = self.config
        start_time = time.perf_counter()
        params = {k: v.clone().requires_grad_(True) for k, v in self.init_parameters(teacher, nfe).items()}
        initial_loss = self.evaluate(params, teacher, nfe, validation)
        ema = {k: v.detach().clone() for k, v in params.items()}
        optimizer = torch.optim.Adam(list(params.values()), lr=cfg["lr"])
        generator = torch.Generator().manual_seed(cfg["seed"])
        start, recent = 0, []
        if checkpoint_path is not None and Path(checkpoint_path).is_file():
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != self._checkpoint_identity(teacher, nfe):
                raise GasbenchError(f"checkpoint {checkpoint_path} was written for another solver configuration; delete it to start over.")
            with torch.no_grad():
                for k in params:
                    params[k].copy_(state["params"][k])
                    ema[k].copy_(state["ema"][k])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            start, recent = state["iteration"], list(state["recent"])

        def save_checkpoint(iteration: int) -> None:
            if checkpoint_path is None:
                return
            buffer = io.BytesIO()
            torch.save({"format": CHECKPOINT_FORMAT, "config": self._checkpoint_identity(teacher, nfe),
                        "iteration": iteration, "params": {k: v.detach() for k, v in params.items()}, "ema": ema,
                        "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "recent": recent}, buffer)
            write_atomic(Path(checkpoint_path), buffer.getvalue())

        size = len(train["x0"])
        if isinstance(progress, Progress):  # a caller's live display (gasbench run)
            bar, display = progress, contextlib.nullcontext()
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            bar = display = Progress(*columns, disable=not progress)
        with display:
            task = bar.add_task(f"[bold]fit {self.name} NFE {nfe}", total=cfg["iterations"], completed=start, loss=math.nan)
            for iteration in range(start, cfg["iterations"]):
                index = torch.randint(size, (min(cfg["batch_size"], size),), generator=generator)
                loss = self.loss(params, teacher, nfe, {k: v[index] for k, v in train.items()})
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise GasbenchError(
                        f"{self.name} training loss became {value} at iteration {iteration + 1} (NFE {nfe}); "
                        f"lower --solver-arg lr (now {cfg['lr']}) or check the teacher data for NaN."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["grad_clip"])
                optimizer.step()
                with torch.no_grad():
                    for k in params:
                        ema[k].lerp_(params[k], 1 - cfg["ema"])
                recent = (recent + [value])[-50:]
                bar.update(task, advance=1, loss=sum(recent) / len(recent))
                if (iteration + 1) % 100 == 0:
                    save_checkpoint(iteration + 1)
        save_checkpoint(cfg["iterations"])
        self.params = ema
        final_loss = self.evaluate(ema, teacher, nfe, validation)
        self.summary = {"iterations": cfg["iterations"], "train_size": size, "validation_size": len(validation["x0"]),
                        "initial_validation_loss": initial_loss, "final_validation_loss": final_loss,
                        "wall_time_s": round(time.perf_counter() - start_time, 2), "loss": cfg["loss"]}
        return self.summary

    def _identity(self, teacher, nfe: int) -> dict[str, Any]:
        return {"solver": self.name, "nfe": nfe, "teacher": teacher.name, **self.resolved_config(teacher)}

    def _checkpoint_identity(self, teacher, nfe: int) -> str:
        """The configuration a checkpoint must match to be resumed; the budget may grow."""
        identity = {k: v for k, v in self._identity(teacher, nfe).items() if k != "iterations"}
        return json.dumps(identity, sort_keys=True)

    # --- saved state ----------------------------------------------------------------------------

    def save_state(self, directory: Path, teacher, nfe: int) -> None:
        """Write the trained parameters and a JSON of configuration and training summary."""
        if self.params is None:
            raise GasbenchError(f"solver '{self.name}' has no trained parameters to save; fit it first.")
        directory = Path(directory)
        write_atomic(directory / STATE_FILE, save({k: v.detach().contiguous() for k, v in self.params.items()}))
        blob = {**self._identity(teacher, nfe), "training": self.summary}
        write_atomic(directory / CONFIG_FILE, (json.dumps(blob, indent=2, sort_keys=True) + "\n").encode())

    def load_state(self, directory: Path, teacher, nfe: int) -> bool:
        """Load a saved state written for this exact configuration; False if there is none."""
        directory = Path(directory)
        try:
            blob = json.loads((directory / CONFIG_FILE).read_text())
            params = load_file(str(directory / STATE_FILE))
        except (OSError, ValueError):
            return False
        training = blob.pop("training", {})
        if blob != json.loads(json.dumps(self._identity(teacher, nfe))):
            return False
        expected = self.init_parameters(teacher, nfe)
        if set(params) != set(expected) or any(params[k].shape != expected[k].shape for k in expected):
            return False
        self.params, self.summary = params, training
        return True

