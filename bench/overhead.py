"""`gasbench bench overhead`: solver arithmetic time against denoiser time, measured in one run.

The executor times every denoiser call; the rest of a sampling call is the solver's own
arithmetic (Eq. 13 combinations). Reported as a ratio so machine noise cancels.
"""

from __future__ import annotations

import time

import torch

from gasbench.registry import SOLVERS
from gasbench.sampling import noise_and_conditions
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
