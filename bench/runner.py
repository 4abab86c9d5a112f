"""`gasbench run`: resolve the teacher and methods, sample every cell on the same seeds, record.

Data flow (DESIGN.md): teacher -> the teacher's reference solutions for the evaluation seeds
(the trajectory cache) -> for each method x NFE: build its coefficient table, sample the seeds, score against
the reference, write ``metrics.json`` and ``samples.png`` atomically. A cell whose record exists
with the same teacher, solver configuration, seeds and metrics is reused, so an interrupted run
resumes; so is one evaluated on more seed sets or metrics than asked. Any other record stops the
run before any work (``--overwrite`` replaces it): the same solve evaluated on other seeds or
metrics, one made with other teacher weights, solver configuration or solver code (the sha256 of its
source files, :meth:`~gasbench.solvers.base.Solver.code_sha256`; records from before it was recorded
count as other code), or a file that is no readable record.
Each cell is computed under a file lock (:mod:`gasbench.core.locks`), so runs sharing a results
directory wait for each other's cells instead of computing them twice.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

import gasbench
from gasbench.budgets import DEFAULT_REFERENCE, budget_options
from gasbench.core import distributed, locks, phases
from gasbench.core.errors import GasbenchError
from gasbench.core.faults import fault_point
from gasbench.core.images import save_grid
from gasbench.core.phases import phase
from gasbench.core.progress import Bars, announce_wait
from gasbench.core.records import (
    SCHEMA_VERSION,
    TEACHER_LABEL,
    CellRecord,
    cell_dir,
    code_revision,
    ensure_writable,
    write_json_atomic,
)
from gasbench.core.registry import SOLVERS, default_run_solvers
from gasbench.core.seeds import SPLIT_STARTS
from gasbench.core.weights import sha256_of
from gasbench.jobs import CellCount, costliest_first, shard_of, write_plan
from gasbench.metrics import Evaluation, Metric, get_metric
from gasbench.reuse import cell_identity, check_existing, reusable, teacher_identity
from gasbench.sampling import AUTO_BATCH, auto_batch_size, sample_seeds
from gasbench.solvers.executor import ExecutionStats, Table
from gasbench.solvers.learned import STATE_FILE
from gasbench.teachers.load import load_teacher
from gasbench.trajectories import TrajectoryCache
from gasbench.tuning import tune_schedules, wants_tuning
from gasbench.verify import environment, sample_checksums

GRID_SIZE = 64
MAX_NFE = 1000  # (NFE, NFE) coefficient tables of a few MB; the references use NFE <= 50


@dataclass
class RunConfig:
    teacher: str = "digits"
    methods: Optional[list[str]] = None  # None: every registered method
    nfes: list[int] = field(default_factory=lambda: [4, 6, 8, 10])
    seed: int = SPLIT_STARTS["evaluation"]  # GAS release convention
    num_samples: Optional[int] = None  # None: the teacher's protocol.samples
    batch_size: int = 256
    results_dir: Path = Path("results")
    schedule: Optional[str] = None
    solver_args: dict[str, str] = field(default_factory=dict)
    metrics: Optional[list[str]] = None  # None: the teacher's default metrics
    seed_sets: int = 1  # independent evaluation seed sets (mean and std over them)
    overwrite: bool = False
    weights: Optional[Path] = None  # the teacher's weights file instead of the pinned/cached one
    device: str = "auto"
    precision: str = "fp32"  # "bf16": the teacher's network under bfloat16 autocast
    reference_images: Optional[Path] = None  # real images for FID/precision/recall (user's set)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method, from --config
    budget: Optional[str] = None  # learned methods' training budget (gasbench.budgets); None: the teacher's
    matched_to: str = DEFAULT_REFERENCE  # the reference method of the matched budget
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (OMP_NUM_THREADS or the cores)
    config_file: Optional[dict[str, str]] = None  # path and sha256 of the --config file
    command: Optional[str] = None  # the command line that started the run (the CLI sets it)

    def resolved(self) -> dict[str, Any]:
        """The configuration as a record stores it (JSON types; paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def seed_ranges(self) -> list[list[int]]:
        """Seed set k is ``seed + k * num_samples ... + num_samples - 1``: disjoint, contiguous."""
        return [list(range(self.seed + k * self.num_samples, self.seed + (k + 1) * self.num_samples))
                for k in range(self.seed_sets)]


@dataclass
class Cell:
    label: str
    solver: Any
    nfe: int
    table: Table  # a SolverTable, or an AdaptiveTable (rows chosen per sample while sampling)
    tuned: bool = False  # schedule "tuned": solver and table replaced by tune_schedules (gasbench.tuning)
    schedule_tuning: Optional[dict[str, Any]] = None  # the validation scores behind a tuned schedule


def method_label(name: str, options: dict[str, Any], defaults: Optional[dict[str, Any]] = None) -> str:
    """Directory/leaderboard name of a method: its name plus the options that differ from
    ``defaults`` (all given options without them), sorted."""
    defaults = defaults or {}
    changed = {k: v for k, v in options.items() if k not in defaults or str(defaults[k]).lower() != str(v).lower()}
    return name + "".join(f"+{k}={v}" for k, v in sorted(changed.items()))


def build_cells(config: RunConfig, teacher) -> list[Cell]:
    """Instantiate every method and check every NFE before any sampling starts."""
    # solvers that need something imported first (the GAS authors' students) run only when named
    names = config.methods or [entry.name for entry in default_run_solvers()]
    if not config.nfes:
        raise GasbenchError("no NFE to run; give --nfe, e.g. --nfe 4,6,8.")
    if any(n < 1 for n in config.nfes):
        raise GasbenchError(f"NFE must be at least 1, got {sorted(config.nfes)}.")
    if max(config.nfes) > MAX_NFE:
        raise GasbenchError(
            f"NFE {max(config.nfes)} is above gasbench's limit of {MAX_NFE}: a solver's coefficient table holds "
            f"NFE x NFE numbers, and few-step solvers are compared at NFE of about 4-20."
        )
    used_args: set[str] = set()
    cells = []

    def explicit_options(name: str, cls) -> dict[str, Any]:
        """The run's own options for method ``name``: --solver-arg, --schedule, then --config's."""
        options = {k: v for k, v in config.solver_args.items() if k in cls.options}
        if config.schedule is not None:
            options["schedule"] = config.schedule
        return {**options, **config.method_options.get(name, {})}

    reference = SOLVERS.resolve(config.matched_to)
    reference_options = explicit_options(reference.name, reference.obj)
    for name in names:
        entry = SOLVERS.resolve(name)
        cls = entry.obj
        options = explicit_options(name, cls)
        used_args |= options.keys() & config.solver_args.keys()
        tuned = wants_tuning(entry.name, cls, options)
        # a tuned cell is built on the paper's schedule here, so an NFE it cannot do fails up front
        solver = cls(**{**options, "schedule": None}) if tuned else cls(**options)
        label = method_label(entry.name, options, cls.options)
        budget = config.budget or teacher.default_budget
        if solver.learned and budget != teacher.default_budget:
            label += f"+budget={budget}" + (f":{config.matched_to}" if budget == "matched" and
                                             config.matched_to != DEFAULT_REFERENCE else "")
        for nfe in config.nfes:
            # a learned solver holds the parameters of one NFE, so each cell gets its own, with
            # the budget's options under the explicit ones
            cell_solver = solver
            if solver.learned:
                budgeted = budget_options(cls, budget, teacher, nfe, reference.name, reference_options)
                cell_solver = cls(**{**budgeted, **options})
                cell_solver.budget = budget
            # built up front so an NFE a solver cannot do fails before any sampling
            cells.append(Cell(label, cell_solver, nfe, cell_solver.table(teacher, nfe), tuned))
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


def run(config: RunConfig, console: Optional[Console] = None,
        timings: Optional[dict[str, float]] = None, shard: Optional[tuple[int, int]] = None) -> list[CellRecord]:
    """Run every (method, NFE) cell of ``config``, plus the teacher's own row; returns the records
    (new or reused), the teacher's first if it has one. ``timings``, if given, receives the
    seconds this call spent per method (training data, training and sampling; reused cells
    cost nothing) and on the teacher's reference solutions. ``shard`` ``(I, N)``: only that shard
    of the cells (:func:`gasbench.jobs.shard_of`).

    Launched by torchrun, the processes share the work (:mod:`gasbench.core.distributed`) and write
    the same records as one process; only rank 0 writes files and reports progress."""
    distributed.init_from_env()
    if config.threads is not None:
        if config.threads < 1:
            raise GasbenchError(f"--threads must be at least 1, got {config.threads}.")
        torch.set_num_threads(config.threads)  # each record's environment says how many ran
    timings = {} if timings is None else timings
    console = console or Console(stderr=True)
    if not distributed.is_main():
        console = Console(stderr=True, quiet=True)
    for name in config.methods or []:
        SOLVERS.resolve(name)  # unknown names fail before the teacher is loaded
    with distributed.main_first():  # weights to download or convert are fetched once
        teacher = load_teacher(config.teacher, config.weights, config.device, config.precision)
    if config.reference_images is not None:  # this run's protocol; the loaded teacher keeps its own
        teacher = teacher.under(replace(teacher.protocol, reference_images=Path(config.reference_images)))
    if config.batch_size == AUTO_BATCH:
        # batches are the unit of work split over processes, so all of them take one size
        config = replace(config, batch_size=distributed.smallest(auto_batch_size(teacher)))
        console.print(f"batch size {config.batch_size} (from free memory on {teacher.device})")
    metrics = [get_metric(name) for name in (config.metrics or teacher.protocol.metrics)]
    cells = build_cells(config, teacher)
    planned = [(c.label, c.nfe) for c in cells]
    if shard is not None:
        cells = shard_of(cells, shard)
    if config.num_samples is None:
        config = replace(config, num_samples=teacher.protocol.samples)
    if config.num_samples < 1:
        raise GasbenchError(f"--num-samples must be at least 1, got {config.num_samples}.")
    if config.seed_sets < 1:
        raise GasbenchError(f"--seeds must be at least 1, got {config.seed_sets}.")
    ensure_writable(config.results_dir)
    with distributed.main_first():  # paired metrics' networks (LPIPS) are fetched once
        for m in metrics:
            if m.paired:
                m.describe(teacher)
    for m in metrics:  # a missing real-image set or metric network stops the run before any solve
        if not m.paired:
            m.describe(teacher)
    seed_sets = config.seed_ranges()
    tune_schedules(cells, teacher, config.batch_size, console)
    check_existing(config.results_dir, config.overwrite, teacher, metrics, cells, seed_sets, console)
    with Bars(console=console, enabled=distributed.is_main()) as progress:
        references, conditions = [], []
        ref = teacher.reference
        start = time.perf_counter()
        for seeds in seed_sets:
            cache = TrajectoryCache(teacher, tuple(seeds))
            task = progress.add_task(f"{teacher.name}: reference {ref.solver} NFE {ref.nfe}, seeds {seeds[0]}-", total=len(seeds))
            cache.generate(on_samples=lambda n, task=task: progress.advance(task, n),
                           on_wait=announce_wait(progress.console, cache.directory, "generating these trajectories"))
            solved = cache.load()
            references.append(solved["x0"])
            conditions.append(solved.get("cond"))
        distributed.on_main(lambda: save_reference_grid(teacher, references[0], config.results_dir))
        teacher_record = record_teacher(config, teacher, metrics, seed_sets, references, conditions, progress.console)
        records = [teacher_record] if teacher_record is not None else []
        # the cells this command sets out to compute (gasbench status), once the first work is done
        distributed.on_main(lambda: write_plan(config.results_dir, teacher.name, planned, config.command))
        timings[TEACHER_LABEL] = time.perf_counter() - start
        # counted in cells recorded by any process of this command, so its ETA is the whole run's
        # (records reused from before leave the total)
        overall = CellCount(progress, progress.add_task(f"{teacher.name}: cells", total=len(cells)),
                            [cell_dir(config.results_dir, teacher.name, c.label, c.nfe) / "metrics.json" for c in cells])
        done: dict[int, CellRecord] = {}

        def compute(index: int, cell: Cell, config: RunConfig = config) -> None:
            progress.update(overall.task, description=f"{teacher.name}: cells (now {cell.label} NFE {cell.nfe})")
            start = time.perf_counter()
            done[index] = run_cell(config, teacher, metrics, cell, seed_sets, references, conditions, progress, overall)
            overall.refresh()
            timings[cell.label] = timings.get(cell.label, 0.0) + time.perf_counter() - start

        # the costliest cells first, each claimed without waiting (gasbench.jobs: other processes
        # of this command take the ones held); then the cells held elsewhere, waited for and reused
        for index, cell in costliest_first(cells):
            with locks.claim(cell_dir(config.results_dir, teacher.name, cell.label, cell.nfe)) as mine:
                if mine:
                    compute(index, cell)
        for index, cell in enumerate(cells):
            if index not in done:  # another process held it: its record is this command's (--overwrite too)
                with _cell_lock(cell_dir(config.results_dir, teacher.name, cell.label, cell.nfe), progress.console):
                    compute(index, cell, replace(config, overwrite=False))
    return records + [done[index] for index in range(len(cells))]



def _score(metrics: list[Metric], evaluations: list[Evaluation]) -> dict[str, Any]:
    """Each metric on each seed set; mean, and sample std when there are several sets."""
    fault_point("metric")
    with phase("metrics"):
        per_set = {m.name: [m.compute(e) for e in evaluations] for m in metrics}
    out = {"metrics": {name: float(np.mean(values)) for name, values in per_set.items()}}
    if len(evaluations) > 1:
        out["metrics_std"] = {name: float(np.std(values, ddof=1)) for name, values in per_set.items()}
        out["metrics_per_seed_set"] = per_set
    return out


def _common_fields(config: RunConfig, teacher, metrics: list[Metric], seed_sets, identity) -> dict[str, Any]:
    return {
        "run_config": config.resolved(),
        "schema": SCHEMA_VERSION,
        "identity": identity,
        "teacher": teacher.describe(),
        "metric_provenance": {m.name: m.describe(teacher) for m in metrics},
        "num_samples": sum(len(s) for s in seed_sets),
        "seeds": [[s[0], s[-1]] for s in seed_sets],
        "conditions": "class label uniform at random from each sample's seed" if teacher.num_classes else "none",
        "versions": {"gasbench": gasbench.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version(), "code_revision": code_revision()},
        "environment": environment(teacher.device),
    }


def _cell_lock(directory: Path, console: Console):
    """The lock of a result cell: another `gasbench run` on the same directory waits for this one
    to finish the cell (record, grid, learned state and fit checkpoint), then reuses its record
    (:mod:`gasbench.core.locks`)."""
    return locks.exclusive(directory, on_wait=announce_wait(console, directory, "computing this cell"))


def record_teacher(config: RunConfig, teacher, metrics: list[Metric], seed_sets, references, conditions,
                   console: Console) -> Optional[CellRecord]:
    """The teacher row (GAS Table 2's first row): its reference solver's samples scored with the
    distribution metrics; paired metrics would compare it with itself and are left out, so with
    no distribution metric there is no teacher row (None)."""
    identity = teacher_identity(teacher, metrics, seed_sets)
    if identity is None:
        return None
    unpaired = [m for m in metrics if not m.paired]
    ref = teacher.reference
    out_dir = cell_dir(config.results_dir, teacher.name, TEACHER_LABEL, ref.nfe)
    with _cell_lock(out_dir, console):
        existing = reusable(out_dir / "metrics.json", identity, config.overwrite)
        if existing is not None:
            return existing
        evaluations = [Evaluation(reference, None, teacher, cond) for reference, cond in zip(references, conditions)]
        record = CellRecord(
            **_common_fields(config, teacher, unpaired, seed_sets, identity),
            method=TEACHER_LABEL,
            solver={"name": ref.solver, "learned": False, "reference": True, **ref.to_dict()},
            nfe=ref.nfe,
            **_score(unpaired, evaluations),
            sample_checksums=sample_checksums(references, seed_sets),
            training=None,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        distributed.on_main(lambda: write_json_atomic(out_dir / "metrics.json", record))
        return record


def run_cell(config, teacher, metrics: list[Metric], cell: Cell, seed_sets, references, conditions, progress,
             overall: CellCount) -> CellRecord:
    out_dir = cell_dir(config.results_dir, teacher.name, cell.label, cell.nfe)
    solver_config = cell.solver.resolved_config(teacher)
    identity = cell_identity(teacher, cell, metrics, seed_sets)
    existing = reusable(out_dir / "metrics.json", identity, config.overwrite)
    if existing is not None:
        overall.reuse(out_dir / "metrics.json")
        return existing
    before = phases.totals()
    if cell.solver.learned:
        cell.table = prepare_learned(teacher, cell, out_dir, progress)
    sampling = progress.add_task(f"{teacher.name}: {cell.label} NFE {cell.nfe}", total=sum(len(s) for s in seed_sets))
    stats = ExecutionStats()
    start = time.perf_counter()
    evaluations = []
    for seeds, reference, cond in zip(seed_sets, references, conditions):
        with phase("sampling"):
            samples = sample_seeds(teacher, cell.table, seeds, config.batch_size, stats=stats,
                                   on_batch=lambda n: progress.advance(sampling, n))
        evaluations.append(Evaluation(samples, reference, teacher, cond))
    wall = time.perf_counter() - start
    batches = sum(-(-len(seeds) // config.batch_size) for seeds in seed_sets)
    scores = _score(metrics, evaluations)
    record = CellRecord(
        **_common_fields(config, teacher, metrics, seed_sets, identity),
        method=cell.label,
        solver={"name": cell.solver.name, "learned": cell.solver.learned, **solver_config,
                "hash": identity["solver_hash"], "code_sha256": identity["solver_code"],
                **({"state_sha256": sha256_of(out_dir / STATE_FILE)} if cell.solver.learned else {})},
        nfe=cell.nfe,
        nfe_measured=stats.nfe / batches,
        nfe_convention="denoiser evaluations per sample counted by the executor; CFG pair = 1",
        **scores,
        sample_checksums=sample_checksums([e.samples for e in evaluations], seed_sets),
        wall_time_s=round(wall, 3),
        denoiser_time_s=round(stats.denoiser_seconds, 3),
        peak_memory_mb=round(_peak_memory_mb(), 1),
        training=cell.solver.summary if cell.solver.learned else None,
        **({"schedule_tuning": cell.schedule_tuning} if cell.schedule_tuning else {}),
        time_s=phases.since(before),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )

    def write() -> None:
        save_grid(teacher.decode(evaluations[0].samples[:GRID_SIZE]), out_dir / "samples.png")
        write_json_atomic(out_dir / "metrics.json", record)

    distributed.on_main(write)
    return record


def prepare_learned(teacher, cell: Cell, out_dir: Path, progress: Progress) -> Table:
    """The table of a learned cell: its saved state when one matches its configuration, else a
    fit on the teacher's train / validation trajectories (checkpointed in ``out_dir``, so an
    interrupted fit resumes), saved next to the record."""
    solver, nfe = cell.solver, cell.nfe
    if not solver.load_state(out_dir, teacher, nfe):
        data = []
        for split, size in (("train", solver.config["train_size"]), ("validation", solver.validation_size)):
            cache = TrajectoryCache.for_split(teacher, split, size)
            task = progress.add_task(f"{teacher.name}: {split} trajectories ({len(cache.seeds)})", total=len(cache.seeds))
            cache.generate(on_samples=lambda n, task=task: progress.advance(task, n),
                           on_wait=announce_wait(progress.console, cache.directory, "generating these trajectories"))
            data.append({k: v for k, v in cache.load().items() if k in ("noise", "x0", "cond")})
        solver.fit(teacher, nfe, *data, progress=progress, checkpoint_path=out_dir / "fit-checkpoint.pt")

        def write() -> None:
            solver.save_state(out_dir, teacher, nfe)
            (out_dir / "fit-checkpoint.pt").unlink(missing_ok=True)

        distributed.on_main(write)
    return solver.table(teacher, nfe)
