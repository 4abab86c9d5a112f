"""`gasbench verify CELL`: re-sample a recorded cell's first evaluation seeds and check them
against the checksums its record holds.

Every record stores, beside what produced it (``run_config`` with the command line, ``versions``,
``environment``, the teacher's weights sha256, the solver configuration's hash and, for a learned
solver, its saved state's sha256), the sha256 of its samples (float32, C order, little-endian)
per seed set and, for the first :data:`CHECKED_SEEDS` seeds of the first set, each sample's
sha256 and L2 norm (:func:`sample_checksums`). Verification reloads the teacher and the solver
as the record describes them, solves the first seeds again in the batches the run solved them
in (a sample's bits may depend on its batch's size), and compares. On a CPU the same command on
the same machine reproduces samples bit for bit; another device, thread count or library
version may change the last bits, which the norms then show to be small.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.records import TEACHER_LABEL, read_record
from gasbench.core.registry import SOLVERS
from gasbench.core.weights import sha256_of
from gasbench.sampling import sample_seeds
from gasbench.teachers.load import load_teacher
from gasbench.trajectories import TrajectoryCache

CHECKED_SEEDS = 16  # per-sample checksums kept in a record (the first seeds of its first seed set)
SEED_DIGEST = 16  # hex digits of a sample's sha256 kept: 64 bits tell a changed sample


def _sha256(samples: torch.Tensor) -> str:
    return hashlib.sha256(samples.detach().cpu().contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def sample_checksums(sample_sets: list[torch.Tensor], seed_sets: list[list[int]]) -> dict[str, Any]:
    """What a record keeps of its samples for `gasbench verify`: per seed set the sha256 of all
    its samples, and for the first :data:`CHECKED_SEEDS` seeds each sample's sha256 and L2 norm."""
    first = sample_sets[0][:CHECKED_SEEDS]
    return {
        "dtype": "float32",
        "sha256_per_seed_set": [_sha256(samples) for samples in sample_sets],
        "first_seeds": [{"seed": int(seed), "sha256": _sha256(x)[:SEED_DIGEST], "l2": float(x.double().norm())}
                        for seed, x in zip(seed_sets[0], first)],
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Where a record was computed, as far as it can change a sample's last bits."""
    env = {"platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


@dataclass
class Verification:
    cell: Path
    checks: list[Check]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        """The checks as `gasbench verify` prints them, one per line, then a verdict."""
        lines = [f"{'ok' if c.ok else 'MISMATCH':>8}  {c.what}: {c.detail}" for c in self.checks]
        notes = [f"{'note':>8}  {note}" for note in self.notes]
        verdict = "verified" if self.ok else "FAILED"
        passed = sum(c.ok for c in self.checks)
        return "\n".join([f"{self.cell}:", *lines, *notes, f"{verdict}: {passed} of {len(self.checks)} checks pass"])


def _seed_range(pair: list[int]) -> list[int]:
    return list(range(pair[0], pair[1] + 1))


def _table(record: dict[str, Any], teacher, cell: Path, checks: list[Check]):
    """The recorded solver's table, checking its configuration hash and, if learned, its saved state."""
    nfe = record["nfe"]
    if record["method"] == TEACHER_LABEL:
        recorded, ref = record["identity"]["reference"], teacher.reference
        now = json.loads(json.dumps(ref.to_dict()))
        checks.append(Check("reference solver", recorded == now,
                            f"{ref.solver} NFE {ref.nfe} {ref.schedule}" if recorded == now
                            else f"recorded {recorded}, the teacher now has {now}"))
        return SOLVERS.get(ref.solver)(schedule=ref.schedule, **ref.options).table(teacher, ref.nfe)
    info = record["solver"]
    if info["name"] not in SOLVERS:
        raise GasbenchError(
            f"the solver '{info['name']}' of {record['method']} is not registered here; if it comes from a plugin, "
            f"pass it as for the run: `gasbench verify ... --plugin <module or file.py>` (the run was: "
            f"{record.get('run_config', {}).get('command', 'not recorded')})."
        )
    cls = SOLVERS.get(info["name"])
    solver = cls(**{k: info[k] for k in cls.options if k in info})
    recorded, found = record["identity"]["solver_hash"], solver.config_hash(teacher)
    checks.append(Check("solver configuration hash", recorded == found,
                        found if recorded == found else f"recorded {recorded}, the recorded options hash to {found}"))
    if not solver.learned:
        return solver.table(teacher, nfe)
    from gasbench.solvers.cells import load_cell
    from gasbench.solvers.learned import STATE_FILE

    state = cell / STATE_FILE
    if not state.is_file():
        raise GasbenchError(f"{cell} holds no {STATE_FILE}, the trained state of this learned cell; rerun the cell.")
    found, recorded = sha256_of(state), info.get("state_sha256")
    if recorded is None:
        checks.append(Check("solver state sha256", True, f"{found} (the record has none to compare with)"))
    else:
        checks.append(Check("solver state sha256", recorded == found,
                            found if recorded == found else f"recorded {recorded}, {STATE_FILE} hashes to {found}"))
    try:
        saved = load_cell(cell, teacher)[0]
    except GasbenchError:
        saved = None
    if saved is None or saved.config != solver.config:  # the state of the recorded options only
        checks.append(Check("solver state", False, f"{STATE_FILE} / solver.json do not load as {info['name']} "
                                                    f"for teacher '{teacher.name}' at NFE {nfe}"))
        return None
    return saved.table(teacher, nfe)


def _compare_seeds(samples: torch.Tensor, recorded: list[dict[str, Any]]) -> Check:
    differ = []
    for x, entry in zip(samples, recorded):
        if _sha256(x)[:SEED_DIGEST] != entry["sha256"]:
            l2 = float(x.double().norm())
            relative = abs(l2 - entry["l2"]) / max(abs(entry["l2"]), 1e-30)
            differ.append(f"seed {entry['seed']} (L2 norm {l2:.9g}, recorded {entry['l2']:.9g}: relative difference {relative:.2g})")
    seeds = f"{recorded[0]['seed']}-{recorded[-1]['seed']}"
    if not differ:
        return Check("samples", True, f"{len(recorded)} re-sampled seeds ({seeds}) bit-identical to the record")
    shown = "; ".join(differ[:4]) + ("; ..." if len(differ) > 4 else "")
    return Check("samples", False, f"{len(differ)} of {len(recorded)} re-sampled seeds ({seeds}) differ from the record: {shown}")


def verify_cell(cell: Path, samples: int = 8, all_seeds: bool = False, device: Optional[str] = None) -> Verification:
    """Re-sample the first ``samples`` (at most :data:`CHECKED_SEEDS`) evaluation seeds of the
    record in ``cell`` and compare them, the teacher's weights sha256, the solver's configuration
    hash and (learned) state sha256 with the record; ``all_seeds`` re-samples every seed set and
    compares its sha256 as well. ``device``: default the one the record was computed on."""
    cell = Path(cell)
    record = read_record(cell / "metrics.json")
    if record is None:
        raise GasbenchError(f"{cell} holds no gasbench record (metrics.json); pass a cell directory such as "
                            f"results/digits/euler/nfe4.")
    checksums = record.get("sample_checksums")
    if not checksums:
        raise GasbenchError(f"the record in {cell} has no sample checksums (written by an older gasbench); "
                            f"recompute it with `gasbench run ... --overwrite` to verify it.")
    if not 1 <= samples <= CHECKED_SEEDS:
        raise GasbenchError(f"--samples must be between 1 and {CHECKED_SEEDS} (the seeds a record keeps checksums of), got {samples}.")
    config, recorded_env = record["run_config"], record["environment"]
    teacher = load_teacher(config["teacher"], config["weights"], device or recorded_env["device"], config["precision"])
    recorded_sha = record["identity"]["teacher_sha256"]
    checks = [Check("teacher weights sha256", teacher.weights_sha256 == recorded_sha,
                    (recorded_sha or "none (a teacher without weights)") if teacher.weights_sha256 == recorded_sha
                    else f"recorded {recorded_sha}, teacher '{teacher.name}' now loads {teacher.weights_sha256}")]
    result = Verification(cell, checks, [])
    table = _table(record, teacher, cell, checks)
    if table is None:
        return result
    # the teacher's row holds its reference solutions, solved one shard per batch in the trajectory cache
    shard = TrajectoryCache.shard_size if record["method"] == TEACHER_LABEL else None
    batch = shard or config["batch_size"]

    def resample(seeds: list[int]) -> torch.Tensor:
        """``seeds`` (the start of a seed set) in the batches the run solved them in."""
        step = shard or len(seeds)
        return torch.cat([sample_seeds(teacher, table, seeds[i : i + step], batch) for i in range(0, len(seeds), step)])

    first = _seed_range(record["seeds"][0])
    recorded = checksums["first_seeds"][:samples]
    count = min(len(first), math.ceil(len(recorded) / batch) * batch)  # whole batches
    checks.append(_compare_seeds(resample(first[:count])[: len(recorded)], recorded))
    if all_seeds:
        for k, (pair, digest) in enumerate(zip(record["seeds"], checksums["sha256_per_seed_set"])):
            found = _sha256(resample(_seed_range(pair)))
            checks.append(Check(f"seed set {k + 1} ({pair[0]}-{pair[1]}) sha256", found == digest,
                                found if found == digest else f"recorded {digest}, re-sampled {found}"))
    now = {**environment(teacher.device), "torch": torch.__version__}
    was = {**recorded_env, "torch": record["versions"]["torch"]}
    changed = [f"{k} {was[k]} -> {v}" for k, v in now.items() if k in was and was[k] != v]
    if changed:
        result.notes.append("this environment differs from the record's, which may change samples' last bits: "
                            + ", ".join(changed))
    return result
