"""The teacher-trajectory cache: the teacher's reference solutions, computed once per seed range.

For a split (train / validation / evaluation) the cache holds, per sample, its seed, its unit
noise (drawn from its own seed), its condition, the teacher's reference-solver solution x_0 and,
on request, ``states`` intermediate states of the reference trajectory, as numbered safetensors
shards under a key of (teacher, weights sha256, reference solver, seeds, states, shard size,
cache version). Shards are written atomically and generation skips shards
already present, so an interrupted generation resumes and yields byte-identical shards.

Shard tensors: ``seeds`` (n,) int64, ``noise`` (n, *shape) float32 (x_T = sigma_max * noise),
``x0`` (n, *shape) float32, ``cond`` (n,) for conditional teachers, and with ``states`` > 0
``trajectory`` (n, states, *shape) float32 with ``trajectory_sigmas`` (states,) float64.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from gasbench.core import distributed, locks
from gasbench.core.errors import GasbenchError
from gasbench.core.faults import fault_point
from gasbench.core.phases import phase
from gasbench.core.records import write_atomic, write_json_atomic
from gasbench.core.registry import SOLVERS
from gasbench.core.seeds import SPLIT_ENDS, SPLIT_SIZES, SPLIT_STARTS, noise_and_conditions
from gasbench.core.weights import gasbench_home
from gasbench.solvers.executor import execute

CACHE_VERSION = 3  # 3: the built-in teachers' networks run channels-last
TENSORS = ("seeds", "noise", "x0")


def cache_root() -> Path:
    return gasbench_home() / "trajectories"


@dataclass(frozen=True)
class TrajectoryCache:
    """The reference solutions of ``teacher`` for ``seeds`` (a contiguous range)."""

    teacher: object
    seeds: tuple[int, ...]
    shard_size: int = 256
    root: Optional[Path] = None
    # intermediate states kept per sample: evaluation points of the reference solver spaced
    # evenly over its grid, the first (x_T) and the last (before x_0) included
    states: int = 0

    def __post_init__(self):
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or seeds != tuple(range(seeds[0], seeds[0] + len(seeds))):
            raise GasbenchError("a trajectory cache needs a non-empty, contiguous, increasing range of seeds.")
        if self.shard_size < 1 or self.states < 0:
            raise GasbenchError(f"shard_size must be >= 1 and states >= 0, got {self.shard_size} and {self.states}.")
        object.__setattr__(self, "seeds", seeds)

    @classmethod
    def for_split(cls, teacher, split: str, size: Optional[int] = None, states: int = 0,
                  root: Optional[Path] = None) -> "TrajectoryCache":
        """The cache of the first ``size`` seeds (default :data:`SPLIT_SIZES`) of a named split."""
        if split not in SPLIT_STARTS:
            raise GasbenchError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_STARTS)}.")
        size = SPLIT_SIZES[split] if size is None else int(size)
        start, end = SPLIT_STARTS[split], SPLIT_ENDS[split]
        if size < 1:
            raise GasbenchError(f"the {split} split needs at least 1 sample, got {size}.")
        if end is not None and start + size > end:
            following = min((name for name, s in SPLIT_STARTS.items() if s >= end), key=SPLIT_STARTS.get)
            raise GasbenchError(
                f"{size:,} {split} samples (seeds {start:,}-{start + size - 1:,}) would overlap the next split: "
                f"the {following} split starts at seed {end:,}, so the {split} split holds at most "
                f"{end - start:,} samples."
            )
        return cls(teacher, tuple(range(start, start + size)), root=root, states=states)

    @property
    def key(self) -> dict:
        return {
            "teacher": self.teacher.name,
            "weights_sha256": self.teacher.weights_sha256,
            "reference": self.teacher.reference.to_dict(),
            "seeds": [self.seeds[0], self.seeds[-1], len(self.seeds)],
            "states": self.states,
            "shard_size": self.shard_size,
            "version": CACHE_VERSION,
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()

    @property
    def directory(self) -> Path:
        return (self.root or cache_root()) / self.teacher.name / self.digest[:16]

    def shard_path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.safetensors"

    def shard_seeds(self, index: int) -> list[int]:
        return list(self.seeds[index * self.shard_size : (index + 1) * self.shard_size])

    @property
    def num_shards(self) -> int:
        return -(-len(self.seeds) // self.shard_size)

    def _read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Shard ``index``, checked against this cache: key, seeds, tensors present and their shapes."""
        path = self.shard_path(index)
        rerun = "delete it and rerun to regenerate it"
        if not path.is_file():
            raise GasbenchError(f"trajectory shard {path} is missing; run the generation (it resumes) first.")
        try:
            with safe_open(str(path), framework="pt") as shard:
                metadata = shard.metadata() or {}
                tensors = {name: shard.get_tensor(name) for name in shard.keys()}
        except (OSError, SafetensorError) as exc:
            raise GasbenchError(f"trajectory shard {path} is corrupt ({exc}); {rerun}.") from None
        if metadata.get("key") != self.digest:
            raise GasbenchError(
                f"trajectory shard {path} belongs to another cache key; delete {self.directory} "
                f"and rerun to regenerate it."
            )
        missing = [name for name in self._tensor_names() if name not in tensors]
        if missing:
            raise GasbenchError(f"trajectory shard {path} lacks {', '.join(missing)}; {rerun}.")
        expected = self.shard_seeds(index)
        if tensors["seeds"].dim() != 1 or tensors["seeds"].tolist() != expected:
            raise GasbenchError(
                f"trajectory shard {path} holds other seeds than its name says (expected "
                f"{expected[0]}-{expected[-1]}); {rerun}."
            )
        shapes = {"noise": (len(expected), *self.teacher.shape), "x0": (len(expected), *self.teacher.shape),
                  "cond": (len(expected),), "trajectory": (len(expected), self.states, *self.teacher.shape),
                  "trajectory_sigmas": (self.states,)}
        wrong = [f"{name} {tuple(tensors[name].shape)} instead of {shapes[name]}"
                 for name in self._tensor_names() if name in shapes and tuple(tensors[name].shape) != shapes[name]]
        if wrong:
            raise GasbenchError(f"trajectory shard {path} has {', '.join(wrong)}; {rerun}.")
        return tensors

    def _tensor_names(self) -> tuple[str, ...]:
        conditional = getattr(self.teacher, "num_classes", 0) > 0
        return TENSORS + (("cond",) if conditional else ()) + (("trajectory", "trajectory_sigmas") if self.states else ())

    def state_indices(self, nfe: int) -> list[int]:
        """Which of the reference solver's ``nfe`` evaluation points are stored: ``states`` of them
        spaced evenly over the evaluation index 0..nfe-1 (rounded), the first (x_T, at sigma_max)
        and the last (the input of the final denoiser call) included; one state keeps x_T only."""
        if self.states > nfe:
            raise GasbenchError(f"cannot keep {self.states} states of a {nfe}-step reference trajectory.")
        return sorted({round(i * (nfe - 1) / max(self.states - 1, 1)) for i in range(self.states)})

    @torch.no_grad()
    def _solve(self, table, noise: torch.Tensor, cond: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """x_0 of a shard's samples and their kept states, as one batch: a network's arithmetic can
        depend on the batch size in the last bits, so a run's ``--batch-size`` must not decide
        what a shared cache holds."""
        keep = self.state_indices(table.nfe) if self.states else []
        denoiser = self.teacher.denoiser(cond)
        x0, xs = execute(table, denoiser, noise * self.teacher.sigma_max, return_trajectory=True)
        tensors = {"x0": x0.float()}
        if keep:
            tensors["trajectory"] = torch.stack([xs[i].float() for i in keep], dim=1)
            tensors["trajectory_sigmas"] = table.sigmas[keep].detach().double()
        return tensors

    def generate(self, on_samples: Optional[Callable[[int], None]] = None,
                 on_wait: Optional[Callable[[], None]] = None) -> None:
        """Write every missing shard, each solved as one batch of ``shard_size`` samples (so the
        contents depend on the cache's key alone); shards already on disk are checked and kept
        (resume). ``on_samples`` hears of each shard written or found.

        Processes filling the same cache share it shard by shard: each solves the shards no other
        process holds, then waits for the held ones (``on_wait`` is called once when it starts
        waiting) and solves any a crashed holder left unwritten. Under torchrun the ranks write
        contiguous blocks of the shards and return when every shard is written."""
        ref = self.teacher.reference
        table = SOLVERS.get(ref.solver)(schedule=ref.schedule, **ref.options).table(self.teacher, ref.nfe)
        if self.states:
            self.state_indices(table.nfe)  # too many states: stop before writing anything
        if distributed.world_size() > 1:
            self._generate_distributed(table, on_samples, on_wait)
            return
        write_json_atomic(self.directory / "manifest.json", self.key)
        held = []
        for index in range(self.num_shards):
            with locks.claim(self.directory, self._lock_name(index)) as mine:
                if mine:
                    self._write_shard(index, table, on_samples)
                else:
                    held.append(index)
        for index in held:
            with locks.exclusive(self.directory, on_wait, self._lock_name(index)):
                self._write_shard(index, table, on_samples)
            on_wait = None  # one message per generation

    def _generate_distributed(self, table, on_samples, on_wait) -> None:
        with locks.exclusive(self.directory, on_wait):
            if distributed.is_main():
                write_json_atomic(self.directory / "manifest.json", self.key)
            mine = distributed.shard(range(self.num_shards))
            for index in mine:
                self._write_shard(index, table, on_samples)
            distributed.barrier()
        written = sum(len(self.shard_seeds(i)) for i in mine)
        if on_samples is not None and written < len(self.seeds):
            on_samples(len(self.seeds) - written)  # the other ranks' shards

    @staticmethod
    def _lock_name(index: int) -> str:
        return f".shard-{index:05d}.lock"

    def _write_shard(self, index: int, table, on_samples: Optional[Callable[[int], None]]) -> None:
        """Shard ``index``: checked when on disk (a damaged one stops here with a clear message),
        else solved and written atomically."""
        seeds = self.shard_seeds(index)
        if self.shard_path(index).is_file():
            self._read_shard(index)
        else:
            noise, cond = noise_and_conditions(self.teacher, seeds)
            with phase("teacher_solves"):
                solved = self._solve(table, noise, cond)
            tensors = {"seeds": torch.tensor(seeds), "noise": noise.float(), **solved}
            if cond is not None:
                tensors["cond"] = cond
            write_atomic(self.shard_path(index), save(tensors, metadata={"key": self.digest}))
            fault_point("trajectory-shard")
        if on_samples is not None:
            on_samples(len(seeds))

    def load(self) -> dict[str, torch.Tensor]:
        """All shards concatenated in seed order (shards are numbered, read numerically)."""
        shards = [self._read_shard(i) for i in range(self.num_shards)]
        data = {name: torch.cat([s[name] for s in shards]) for name in shards[0] if name != "trajectory_sigmas"}
        if self.states:
            data["trajectory_sigmas"] = shards[0]["trajectory_sigmas"]
        return data


def describe_caches(root: Optional[Path] = None) -> list[dict]:
    """One row per cache directory: its key, shard count and size on disk."""
    rows = []
    for manifest in sorted((root or cache_root()).glob("*/*/manifest.json")):
        key = json.loads(manifest.read_text())
        shards = sorted(manifest.parent.glob("shard-*.safetensors"))
        rows.append({
            "directory": str(manifest.parent),
            "teacher": key["teacher"],
            "seeds": f"{key['seeds'][0]}-{key['seeds'][1]}",
            "samples": key["seeds"][2],
            "states": key.get("states", 0),
            "reference": f"{key['reference']['solver']} NFE {key['reference']['nfe']} {key['reference']['schedule']}",
            "shards": f"{len(shards)}/{-(-key['seeds'][2] // key['shard_size'])}",
            "size_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 2),
        })
    return rows
