"""Several processes share one `gasbench run` (torch.distributed, launched by torchrun).

Launch::

    torchrun --nproc_per_node=2 -m gasbench run -d cifar10 -m dpmpp3m,gs --nfe 4,6

Without torchrun every function here is the identity (one process, world size 1), so a plain
``gasbench run`` behaves as before. Under torchrun :func:`init_from_env` joins the process group
(gloo for CPU tensors, and NCCL for CUDA tensors where there is a GPU; each process then uses GPU
``LOCAL_RANK`` for ``--device auto`` or ``cuda``), and the work is split as follows:

* sampling (:func:`gasbench.sampling.sample_seeds`): the batches one process would run are split
  into contiguous blocks, one per rank, and the samples are gathered in seed order on every rank.
  A sample's noise and condition come from its own seed and it is solved in the very same batch
  as in one process, so every sample is bit-identical to the single-process one;
* trajectory caches (:meth:`gasbench.trajectories.TrajectoryCache.generate`): each rank writes a
  contiguous block of the shards (files), then all wait for the others; shards are byte-identical
  to a single process's;
* metric features (:meth:`gasbench.features.FeatureSpace.extract_all`): the same as sampling, in
  whole batches of the feature network;
* learned solvers (:meth:`gasbench.solvers.learned.LearnedSolver.fit`): every rank draws the same
  batch indices, keeps its contiguous slice, and the gradients are averaged over the whole batch
  (:func:`average_gradients`) before clipping and the optimiser step, so the ranks hold the same
  parameters. The averaged gradient is the single-process one up to floating-point summation
  order, so a trained solver may differ from a single-process fit in the last bits.

Every rank repeats the rest: decoding samples, paired metrics (LPIPS among them), the metric
arithmetic on the gathered features, and a fit's validation losses. Only rank 0 writes records,
sample grids, solver states and checkpoints; the others wait at a :func:`barrier` so every rank
then sees the same files. Weights and metric networks are fetched by rank 0 before the others
look for them (:func:`main_first`). ``--batch-size auto`` takes the smallest size over the GPUs,
since batches are the unit of work. The collectives move CPU tensors (the runner keeps solver
state, samples, features and learned parameters on the CPU).
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from gasbench.core.errors import GasbenchError

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group that torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); False, doing nothing, when not launched by torchrun.
    Idempotent."""
    if dist.is_available() and dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or not dist.is_available():
        return False
    if torch.cuda.is_available():
        local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local >= gpus:
            raise GasbenchError(
                f"torchrun started more processes on this machine than its {gpus} GPU(s); pass --nproc_per_node={gpus} "
                f"or less (or hide the GPUs, CUDA_VISIBLE_DEVICES=, for CPU processes)."
            )
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    atexit.register(dist.destroy_process_group)
    return True


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process writes files and shows progress (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        # an all-reduce of a CPU tensor, which gloo serves everywhere (NCCL's barrier needs a GPU chosen)
        dist.all_reduce(torch.zeros(1))


def on_main(write: Callable[[], None]) -> None:
    """Call ``write`` (files: records, grids, states) on rank 0 only; every rank returns once it
    is done, so all of them then see the same files."""
    if is_main():
        write()
    barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block, then the other ranks do: what it downloads or converts (weights,
    metric networks) is on disk when they look for it. The block must hold no collective."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def smallest(value: int) -> int:
    """The smallest ``value`` over the ranks (a batch size every GPU can take)."""
    if not _active():
        return value
    buffer = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(buffer, op=dist.ReduceOp.MIN)
    return int(buffer)


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's contiguous block of ``items`` (a list, range or tensor): with n items and W
    ranks, rank r holds items ``r n // W`` to ``(r + 1) n // W - 1``, so blocks differ in size by
    at most one and concatenating them in rank order, as :func:`gather` does, gives back
    ``items``. Every item when not distributed."""
    count, size, r = len(items), world_size(), rank()
    return items[r * count // size : (r + 1) * count // size]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, on every rank. Ranks may
    hold different lengths (also 0) but the same trailing shape and dtype."""
    if not _active():
        return tensor
    lengths = torch.zeros(world_size(), dtype=torch.int64)
    lengths[rank()] = len(tensor)
    dist.all_reduce(lengths)
    longest = int(lengths.max())
    # all_gather needs equal shapes: pad each block to the longest, cut the padding off after
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    blocks = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat([block[: int(n)] for block, n in zip(blocks, lengths)])


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the ranks (counters such as denoiser evaluations)."""
    if not _active():
        return list(values)
    buffer = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(buffer)
    return buffer.tolist()


def total(count: int) -> int:
    """The sum of ``count`` over the ranks (a whole batch's size from each rank's slice)."""
    return int(sum_over_ranks([count])[0])


def average_gradients(parameters: Iterable[torch.Tensor], count: int) -> None:
    """Replace each parameter's gradient, the mean over this rank's ``count`` samples, by the mean
    over the whole batch: sum_r count_r grad_r / sum_r count_r, one all-reduce in float64.

    Every per-sample-mean loss (L1, L2, LPIPS, the adversarial and R1/R2 terms) then gets the
    gradient one process computes on the whole batch, up to the order of the summation. Every
    rank must pass the same parameters with gradients, in the same order."""
    if not _active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    weighted = [g.detach().cpu().double().flatten() * count for g in grads]
    buffer = torch.cat(weighted + [torch.tensor([float(count)], dtype=torch.float64)])
    dist.all_reduce(buffer)
    samples, offset = buffer[-1], 0
    for g in grads:
        g.copy_((buffer[offset : offset + g.numel()] / samples).view_as(g))
        offset += g.numel()
