"""The teacher-trajectory cache: the teacher's reference solutions, computed once per seed range.

For a split (train / validation / evaluation) the cache holds, per sample, its seed, its unit
noise (drawn from its own seed), its condition, the teacher's reference-solver solution x_0 and,
on request, ``states`` intermediate states of the reference trajectory, as numbered safetensors
shards under a key of (teacher, weights sha256, reference solver, seeds, states, shard size,
cache version). Shards are written atomically and generation skips shards
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
from gasbench.sampling import noise_and_conditions
from gasbench.solvers.executor import execute
from gasbench.weights import gasbench_home

CACHE_VERSION = 2
# Disjoint seed ranges: the GAS release trains from seed 0 and evaluates from 50,000; gasbench
# keeps 40,000-49,999 for validation.
SPLIT_STARTS = {"train": 0, "validation": 40_000, "evaluation": 50_000}
SPLIT_ENDS = {"train": 40_000, "validation": 50_000, "evaluation": None}
# Default sizes from the papers: GS trains on 1,400 pairs (GAS uses 5,000; LD3 about 50, S4S 700,
# S4S-Alt 1,400; each method asks for its own), 1,000 validation pairs, and 50,000 evaluation
# samples for the papers' teachers (the built-in teachers' runs default to 1,000, see RunConfig).
SPLIT_SIZES = {"train": 1_400, "validation": 1_000, "evaluation": 50_000}
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

    @classmethod
    def for_split(cls, teacher, split: str, size: Optional[int] = None, states: int = 0,
                  root: Optional[Path] = None) -> "TrajectoryCache":
        """The cache of the first ``size`` seeds (default :data:`SPLIT_SIZES`) of a named split."""
        if split not in SPLIT_STARTS:
            raise GasbenchError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_STARTS)}.")
        size = SPLIT_SIZES[split] if size is None else size
        start, end = SPLIT_STARTS[split], SPLIT_ENDS[split]
        if size < 1 or (end is not None and start + size > end):
            limit = f"at most {end - start}" if end is not None else "at least 1"
            raise GasbenchError(
                f"the {split} split holds seeds {start}-{end - 1 if end else '...'}; {size} samples do "
                f"not fit ({limit}), or they would overlap the next split."
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
        expected = self.seeds[index * self.shard_size : (index + 1) * self.shard_size]
        missing = [name for name in self._tensor_names() if name not in tensors]
        if missing or tensors["seeds"].tolist() != list(expected):
            problem = f"lacks {', '.join(missing)}" if missing else "holds other seeds than its name says"
            raise GasbenchError(f"trajectory shard {path} {problem}; delete it and rerun to regenerate it.")
        return tensors

    def _tensor_names(self) -> tuple[str, ...]:
        conditional = getattr(self.teacher, "num_classes", 0) > 0
        return TENSORS + (("cond",) if conditional else ()) + (("trajectory", "trajectory_sigmas") if self.states else ())

    def state_indices(self, nfe: int) -> list[int]:
        """Which of the reference solver's ``nfe`` evaluation points are stored."""
        if self.states > nfe:
            raise GasbenchError(f"cannot keep {self.states} states of a {nfe}-step reference trajectory.")
        return sorted({round(i * (nfe - 1) / max(self.states - 1, 1)) for i in range(self.states)})

    @torch.no_grad()
    def _solve(self, table, seeds: list[int], batch_size: int) -> dict[str, torch.Tensor]:
        """The reference solutions of ``seeds`` (as :func:`sample_seeds` computes them) and the states."""
        out: dict[str, list] = {"x0": [], "trajectory": []}
        keep = self.state_indices(table.nfe) if self.states else []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            noise, cond = noise_and_conditions(self.teacher, chunk)
            x0, xs = execute(table, self.teacher.denoiser(cond), noise * self.teacher.sigma_max, return_trajectory=True)
            out["x0"].append(x0.float())
            if keep:
                out["trajectory"].append(torch.stack([xs[i].float() for i in keep], dim=1))
        tensors = {"x0": torch.cat(out["x0"])}
        if keep:
            tensors["trajectory"] = torch.cat(out["trajectory"])
            tensors["trajectory_sigmas"] = table.sigmas[keep].double()
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
                tensors = {"seeds": torch.tensor(seeds), "noise": noise.float(), **self._solve(table, seeds, batch_size)}
                if cond is not None:
                    tensors["cond"] = cond
                write_atomic(self.shard_path(index), save(tensors, metadata={"key": self.digest}))
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
