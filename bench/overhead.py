"""`gasbench bench overhead`: solver arithmetic time against denoiser time, measured in one run.

The executor times every denoiser call; the rest of a sampling call is the solver's own
arithmetic (Eq. 13 combinations). Reported as a ratio so machine noise cancels.
"""

from __future__ import annotations

import math
import os
import time

import torch

from gasbench.core.registry import SOLVERS
from gasbench.core.seeds import noise_and_conditions
from gasbench.solvers.executor import ExecutionStats, execute


@torch.no_grad()
def measure_overhead(teacher, methods: list[str], nfes: list[int], batch_size: int, repeats: int = 3):
    """Rows of (method, nfe, denoiser ms, solver ms, ratio, table ms) per call, best of ``repeats``.

    ``table_ms`` is the one-off cost of building the coefficient table (tracing the loop), paid
    once per (method, NFE) and not per batch, so it is reported beside the ratio, not in it.
    """
    noise, cond = noise_and_conditions(teacher, list(range(batch_size)))
    x_T = noise * teacher.sigma_max
    denoiser = teacher.denoiser(cond)
    execute(SOLVERS.get("euler")().table(teacher, 2), denoiser, x_T)  # warm-up
    rows = []
    for name in methods:
        solver = SOLVERS.get(name)()
        for nfe in nfes:
            t0 = time.perf_counter()
            table = solver.table(teacher, nfe)
            table_ms = 1e3 * (time.perf_counter() - t0)
            runs = []
            for _ in range(repeats):
                stats = ExecutionStats()
                execute(table, denoiser, x_T, stats=stats)
                runs.append(stats)
            best = min(runs, key=lambda s: s.solver_seconds / s.denoiser_seconds)
            rows.append({
                "method": name,
                "nfe": nfe,
                "denoiser_ms": 1e3 * best.denoiser_seconds,
                "solver_ms": 1e3 * best.solver_seconds,
                "overhead_pct": 100 * best.solver_seconds / best.denoiser_seconds,
                "table_ms": table_ms,
            })
    return rows


def measure_metric_speed(teacher, metrics: list[str], num_samples: int, seed: int = 0):
    """Rows of (metric, setup s, compute s, images/s) on ``num_samples`` samples of the teacher.

    Each metric gets a fresh :class:`~gasbench.metrics.Evaluation`, so features shared between
    metrics in a real run (FD and precision/recall on the same features) are counted for every
    metric here. ``setup`` is the one-off cost paid before the first cell: loading networks and
    the real images' reference features (cached on disk afterwards); it is measured on a
    two-sample evaluation and excluded from images/s.
    """
    from gasbench.metrics import Evaluation, get_metric
    from gasbench.sampling import sample_seeds

    seeds = list(range(seed, seed + num_samples))
    table = SOLVERS.get("euler")().table(teacher, 4)
    samples = sample_seeds(teacher, table, seeds, batch_size=256)
    reference = sample_seeds(teacher, SOLVERS.get("euler")().table(teacher, 8), seeds, batch_size=256)
    rows = []
    for name in metrics:
        spec = get_metric(name)
        t0 = time.perf_counter()
        spec.describe(teacher)
        warmup = 2 if spec.paired else 8  # precision/recall need at least k + 2 = 7 samples
        spec.compute(Evaluation(samples[:warmup], reference[:warmup], teacher))
        t1 = time.perf_counter()
        spec.compute(Evaluation(samples, reference, teacher))
        seconds = time.perf_counter() - t1
        rows.append({"metric": name, "setup_s": t1 - t0, "compute_s": seconds, "images_per_s": num_samples / seconds})
    return rows


def _training_batch(teacher, batch_size: int) -> dict[str, torch.Tensor]:
    noise, cond = noise_and_conditions(teacher, list(range(batch_size)))
    target = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    return {"noise": noise.float(), "x0": target, **({"cond": cond} if cond is not None else {})}


def _training_step(solver, teacher, nfe: int, batch_size: int):
    """One fit iteration of ``solver`` (:meth:`LearnedSolver.training_step`, Adam), as a closure
    over its parameters and a fixed batch."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in solver.parameters_for(teacher, nfe).items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=solver.config["lr"])
    batch, generator = _training_batch(teacher, batch_size), torch.Generator().manual_seed(0)
    solver.start_training(teacher, nfe)

    def step() -> None:
        solver.training_step(params, optimizer, teacher, nfe, batch, generator, iteration=0)

    return step, params, batch


def peak_memory_mb(fn) -> float:
    """How far running ``fn`` raises the memory held by tensors above what it held before, in MiB:
    ``max_memory_allocated`` on a GPU; on a CPU, the running sum of the allocations and frees the
    torch profiler records (its tracer's console chatter is silenced)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def measure_training_step(teacher, method: str, nfes: list[int], batch_size: int, repeats: int = 3,
                          options: dict | None = None):
    """Rows of (NFE, checkpointing, step ms, network ms, ratio, peak MB) for a learned method with
    ``options`` (e.g. the paper's LPIPS loss).

    ``network ms`` is the student's own network passes alone: NFE forward and backward passes of
    the teacher's denoiser at the batch size, the floor any training step pays; the ratio step /
    network is the solver's training overhead (GAS target <= 1.25 without checkpointing, which
    recomputes each forward pass). Peak memory is the rise of the peak during one step: on a GPU
    ``max_memory_allocated``, on a CPU the profiler's record of tensor allocations.
    """
    rows = []
    for nfe in nfes:
        for checkpointing in (False, True):
            solver = SOLVERS.get(method)(**{**(options or {}), "checkpointing": checkpointing})
            step, params, batch = _training_step(solver, teacher, nfe, batch_size)
            sigmas = solver.table_from({k: v.detach() for k, v in params.items()}, teacher, nfe).sigmas.float()
            denoiser = teacher.denoiser(batch.get("cond"))

            def network_passes() -> None:
                for sigma in sigmas:
                    x = (batch["noise"] * sigma).requires_grad_(True)
                    denoiser(x, sigma).backward(torch.ones_like(x))

            times = {"step": math.inf, "network": math.inf}
            for repeat in range(repeats + 1):  # interleaved, so load changes hit both; the first is warm-up
                for name, fn in (("step", step), ("network", network_passes)):
                    t0 = time.perf_counter()
                    fn()
                    if repeat:
                        times[name] = min(times[name], time.perf_counter() - t0)
            peak_mb = peak_memory_mb(step)
            rows.append({"nfe": nfe, "checkpointing": checkpointing, "step_ms": 1e3 * times["step"],
                         "network_ms": 1e3 * times["network"], "ratio": times["step"] / times["network"],
                         "peak_mb": peak_mb})
    return rows
