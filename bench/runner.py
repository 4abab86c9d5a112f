"""`gasbench run`: resolve the teacher and methods, sample every cell on the same seeds, record.

Data flow (DESIGN.md): teacher -> the teacher's reference solutions for the evaluation seeds
(the trajectory cache) -> for each method x NFE: build its coefficient table, sample the seeds, score against
the reference, write ``metrics.json`` and ``samples.png`` atomically. A cell whose record exists
with the same teacher, solver configuration and seeds is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import gasbench
from gasbench.errors import GasbenchError
from gasbench.images import save_grid
from gasbench.metrics import get_metric
from gasbench.records import (
    SCHEMA_VERSION,
    cell_dir,
    code_revision,
    ensure_writable,
    read_record,
    write_json_atomic,
)
from gasbench.registry import SOLVERS, TEACHERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.executor import ExecutionStats, SolverTable
from gasbench.trajectories import SPLIT_STARTS, TrajectoryCache

GRID_SIZE = 64


@dataclass
class RunConfig:
    teacher: str = "digits"
    methods: Optional[list[str]] = None  # None: every registered method
    nfes: list[int] = field(default_factory=lambda: [4, 6, 8, 10])
    seed: int = SPLIT_STARTS["evaluation"]  # GAS release convention
    num_samples: int = 1000
    batch_size: int = 256
    results_dir: Path = Path("results")
    schedule: Optional[str] = None
    solver_args: dict[str, str] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["rmse", "psnr"])
    overwrite: bool = False


@dataclass
class Cell:
    label: str
    solver: Any
    nfe: int
    table: SolverTable


def method_label(name: str, options: dict[str, Any]) -> str:
    """Directory/leaderboard name of a method: its name plus any non-default options."""
    return name + "".join(f"+{k}={v}" for k, v in sorted(options.items()))


def build_cells(config: RunConfig, teacher) -> list[Cell]:
    """Instantiate every method and check every NFE before any sampling starts."""
    names = config.methods if config.methods else SOLVERS.names()
    if any(n < 1 for n in config.nfes):
        raise GasbenchError(f"NFE must be at least 1, got {sorted(config.nfes)}.")
    used_args: set[str] = set()
    cells = []
    for name in names:
        entry = SOLVERS.resolve(name)
        cls = entry.obj
        options = {k: v for k, v in config.solver_args.items() if k in cls.options}
        used_args |= options.keys()
        if config.schedule is not None:
            options["schedule"] = config.schedule
        solver = cls(**options)
        label = method_label(entry.name, options)
        for nfe in config.nfes:
            # built up front so an NFE a solver cannot do fails before any sampling
            cells.append(Cell(label, solver, nfe, solver.table(teacher, nfe)))
    unused = set(config.solver_args) - used_args
    if unused:
        raise GasbenchError(
            f"no selected method has the option(s) {', '.join(sorted(unused))}; "
            f"see `gasbench list solvers` for each solver's options."
        )
    return cells


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def save_reference_grid(teacher, reference: torch.Tensor, results_dir: Path) -> None:
    """The teacher's own samples on the evaluation seeds, beside the methods' grids."""
    save_grid(teacher.decode(reference[:GRID_SIZE]), Path(results_dir) / teacher.name / "reference_samples.png")


def run(config: RunConfig, console: Optional[Console] = None) -> list[dict[str, Any]]:
    """Run every (method, NFE) cell of ``config``; returns the records (new or reused)."""
    console = console or Console(stderr=True)
    for name in config.methods or []:
        SOLVERS.resolve(name)  # unknown names fail before the teacher is loaded
    teacher = TEACHERS.get(config.teacher)()
    for name in config.metrics:
        get_metric(name)
    cells = build_cells(config, teacher)
    if config.num_samples < 1:
        raise GasbenchError(f"--num-samples must be at least 1, got {config.num_samples}.")
    ensure_writable(config.results_dir)
    seeds = list(range(config.seed, config.seed + config.num_samples))
    records = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        cache = TrajectoryCache(teacher, tuple(seeds))
        ref = teacher.reference
        task = progress.add_task(f"{teacher.name}: reference {ref.solver} NFE {ref.nfe}", total=len(seeds))
        cache.generate(config.batch_size, on_samples=lambda n: progress.advance(task, n))
        reference = cache.load()["x0"]
        save_reference_grid(teacher, reference, config.results_dir)
        overall = progress.add_task(f"{teacher.name}: {len(cells)} cells", total=len(cells) * len(seeds))
        for cell in cells:
            record = run_cell(config, teacher, cell, seeds, reference, progress, overall)
            records.append(record)
    return records


def run_cell(config, teacher, cell: Cell, seeds, reference, progress, overall) -> dict[str, Any]:
    out_dir = cell_dir(config.results_dir, teacher.name, cell.label, cell.nfe)
    solver_config = cell.solver.resolved_config(teacher)
    identity = {
        "teacher_sha256": teacher.weights_sha256,
        "solver_hash": cell.solver.config_hash(teacher),
        "seeds": [seeds[0], seeds[-1]],
        "metrics": sorted(config.metrics),
    }
    existing = read_record(out_dir / "metrics.json")
    if existing is not None and not config.overwrite and existing.get("identity") == identity:
        progress.advance(overall, len(seeds))
        return existing
    progress.update(overall, description=f"{teacher.name}: {cell.label} NFE {cell.nfe}")
    stats = ExecutionStats()
    start = time.perf_counter()
    samples = sample_seeds(
        teacher, cell.table, seeds, config.batch_size, stats=stats, on_batch=lambda n: progress.advance(overall, n)
    )
    wall = time.perf_counter() - start
    batches = -(-len(seeds) // config.batch_size)
    metrics = {name: get_metric(name).compute(samples, reference, teacher) for name in config.metrics}
    save_grid(teacher.decode(samples[:GRID_SIZE]), out_dir / "samples.png")
    record = {
        "schema": SCHEMA_VERSION,
        "identity": identity,
        "teacher": teacher.describe(),
        "method": cell.label,
        "solver": {"name": cell.solver.name, "learned": cell.solver.learned, **solver_config,
                   "hash": identity["solver_hash"]},
        "nfe": cell.nfe,
        "nfe_measured": stats.nfe / batches,
        "nfe_convention": "denoiser evaluations per sample counted by the executor; CFG pair = 1",
        "metrics": metrics,
        "num_samples": len(seeds),
        "seeds": [seeds[0], seeds[-1]],
        "conditions": "class label uniform at random from each sample's seed" if teacher.num_classes else "none",
        "wall_time_s": round(wall, 3),
        "denoiser_time_s": round(stats.denoiser_seconds, 3),
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "training": None,
        "versions": {"gasbench": gasbench.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "code_revision": code_revision()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out_dir / "metrics.json", record)
    return record
