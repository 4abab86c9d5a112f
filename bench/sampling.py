"""Batched sampling through the executor, each sample from its own seed's noise
(:func:`gasbench.core.seeds.noise_and_conditions`). Under torchrun the batches are split over the
processes (:mod:`gasbench.core.distributed`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from gasbench.core import distributed
from gasbench.core.faults import fault_point
from gasbench.core.seeds import noise_and_conditions
from gasbench.solvers.executor import ExecutionStats, Table, execute

AUTO_BATCH = 0  # RunConfig.batch_size meaning "choose from free memory"
CPU_BATCH = 256


@torch.no_grad()
def auto_batch_size(teacher, headroom: float = 0.8, cap: int = 4096) -> int:
    """The largest power-of-two batch whose denoiser call fits in ``headroom`` of the GPU's free
    memory, from the peak memory of a probe call on 4 samples; 256 on the CPU."""
    device = teacher.device
    if device.type != "cuda":
        return CPU_BATCH
    probe = 4
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    noise, cond = noise_and_conditions(teacher, list(range(probe)))
    teacher.denoiser(cond)((noise * teacher.sigma_max).float(), torch.tensor(teacher.sigma_max))
    per_sample = max((torch.cuda.max_memory_allocated(device) - before) / probe, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    fits = max(1, int(headroom * free / per_sample))
    return min(cap, 2 ** int(math.log2(fits)))


@torch.no_grad()
def sample_seeds(
    teacher,
    table: Table,
    seeds: list[int],
    batch_size: int,
    stats: Optional[ExecutionStats] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Solve from every seed's noise with ``table``; returns float32 samples in seed order.

    In a distributed run each process solves a contiguous block of the batches (of
    ``batch_size`` seeds) one process would solve, and every process returns all samples: each
    sample is computed in the same batch either way, so the result is bit-identical. ``stats``
    then counts every process's evaluations, and ``on_batch`` hears of the other processes'
    samples once they are gathered."""
    batches = [seeds[start : start + batch_size] for start in range(0, len(seeds), batch_size)]
    mine = ExecutionStats()
    out = [torch.empty((0, *teacher.shape))]  # a process with no batch still joins the gather
    for chunk in distributed.shard(batches):
        noise, cond = noise_and_conditions(teacher, chunk)
        x_T = noise * teacher.sigma_max
        out.append(execute(table, teacher.denoiser(cond), x_T, stats=mine).float())
        fault_point("sampling-batch")
        if on_batch is not None:
            on_batch(len(chunk))
    local = torch.cat(out)
    samples = distributed.gather(local)
    if stats is not None:
        nfe, seconds, total = distributed.sum_over_ranks([mine.nfe, mine.denoiser_seconds, mine.total_seconds])
        stats.nfe += int(nfe)
        stats.denoiser_seconds += seconds
        stats.total_seconds += total
    if on_batch is not None and len(samples) > len(local):
        on_batch(len(samples) - len(local))
    return samples
