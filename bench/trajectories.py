"""The teacher-trajectory cache: the teacher's reference solutions, computed once per seed range.

For a split (train / validation / evaluation) the cache holds, per sample, its seed, its unit
noise (drawn from its own seed), its condition and the teacher's reference-solver solution
x_0, as numbered safetensors shards under a key of (teacher, weights sha256, reference solver,
seeds, shard size, cache version). Shards are written atomically and generation skips shards
already present, so an interrupted generation resumes and yields byte-identical shards.
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

from gasbench.errors import GasbenchError
from gasbench.records import write_atomic, write_json_atomic
from gasbench.registry import SOLVERS
from gasbench.sampling import noise_and_conditions, sample_seeds
from gasbench.weights import gasbench_home

CACHE_VERSION = 1
# Disjoint seed ranges of the GAS release: training data from 0-49,999, evaluation from 50,000.
SPLIT_STARTS = {"train": 0, "validation": 40_000, "evaluation": 50_000}


def cache_root() -> Path:
    return gasbench_home() / "trajectories"


@dataclass(frozen=True)
class TrajectoryCache:
    """The reference solutions of ``teacher`` for ``seeds`` (a contiguous range)."""

    teacher: object
    seeds: tuple[int, ...]
    shard_size: int = 256
    root: Optional[Path] = None

    @property
    def key(self) -> dict:
        return {
            "teacher": self.teacher.name,
            "weights_sha256": self.teacher.weights_sha256,
            "reference": self.teacher.reference.to_dict(),
            "seeds": [self.seeds[0], self.seeds[-1], len(self.seeds)],
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

    @property
    def num_shards(self) -> int:
        return -(-len(self.seeds) // self.shard_size)

    def _read_shard(self, index: int) -> dict[str, torch.Tensor]:
        path = self.shard_path(index)
        try:
            with safe_open(str(path), framework="pt") as shard:
                metadata = shard.metadata() or {}
                tensors = {name: shard.get_tensor(name) for name in shard.keys()}
        except (OSError, SafetensorError) as exc:
            raise GasbenchError(
                f"trajectory shard {path} is corrupt ({exc}); delete it and rerun to regenerate it."
            ) from None
        if metadata.get("key") != self.digest:
            raise GasbenchError(
                f"trajectory shard {path} belongs to another cache key; delete {self.directory} "
                f"and rerun to regenerate it."
            )
        return tensors

    def generate(self, batch_size: int = 256, on_samples: Optional[Callable[[int], None]] = None) -> None:
        """Write every missing shard; shards already on disk are kept (resume)."""
        ref = self.teacher.reference
        table = SOLVERS.get(ref.solver)(schedule=ref.schedule, **ref.options).table(self.teacher, ref.nfe)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / "manifest.json", self.key)
        for index in range(self.num_shards):
            seeds = list(self.seeds[index * self.shard_size : (index + 1) * self.shard_size])
            if self.shard_path(index).is_file():
                self._read_shard(index)  # a damaged shard stops here with a clear message
            else:
                noise, cond = noise_and_conditions(self.teacher, seeds)
                x0 = sample_seeds(self.teacher, table, seeds, batch_size)
                tensors = {"seeds": torch.tensor(seeds), "noise": noise.float(), "x0": x0}
                if cond is not None:
                    tensors["cond"] = cond
                write_atomic(self.shard_path(index), save(tensors, metadata={"key": self.digest}))
            if on_samples is not None:
                on_samples(len(seeds))

    def load(self) -> dict[str, torch.Tensor]:
        """All shards concatenated in seed order (shards are numbered, read numerically)."""
        shards = [self._read_shard(i) for i in range(self.num_shards)]
        return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


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
            "reference": f"{key['reference']['solver']} NFE {key['reference']['nfe']} {key['reference']['schedule']}",
            "shards": f"{len(shards)}/{-(-key['seeds'][2] // key['shard_size'])}",
            "size_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 2),
        })
    return rows
