"""``--schedule tuned``: a handcrafted solver's time-step schedule chosen per NFE on validation data.

A cell asked for with schedule ``tuned`` (``gasbench run --schedule tuned``, ``--solver-arg
schedule=tuned``, or a method's own ``schedule: tuned`` in ``--config``) tries every registered
schedule that has that many steps (GITS lists 4-8 only) on the validation split's seeds
(:data:`~gasbench.core.seeds.SPLIT_STARTS`: 40,000 on, never an evaluation seed) and scores each by
its RMSE to the teacher's reference solutions of those seeds, the trajectory cache the learned solvers
validate on. The lowest score wins (a tie: the first registered schedule); the cell then runs and
records that schedule as its ``schedule``, and its record keeps the scores behind the choice
(``schedule_tuning``). The label keeps ``+schedule=tuned``, so the cell stands beside the solver's
paper-schedule row, and a rerun tunes again to the same choice and reuses the record.

Learned solvers are refused: they learn their steps from the named schedule they start on.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from gasbench.core.errors import GasbenchError
from gasbench.core.progress import announce_wait
from gasbench.core.registry import SCHEDULES
from gasbench.metrics import Evaluation, get_metric
from gasbench.sampling import sample_seeds
from gasbench.trajectories import TrajectoryCache

TUNED = "tuned"
SPLIT = "validation"
METRIC = "rmse"  # paired with the teacher's solution from the same noise: what a fast solver should match


def wants_tuning(name: str, cls, options: dict[str, Any]) -> bool:
    """Whether method ``name`` is asked for with schedule ``tuned``; a learned one is refused."""
    if options.get("schedule") != TUNED:
        return False
    if cls.learned:
        raise GasbenchError(
            f"--schedule {TUNED} chooses a handcrafted solver's schedule on validation trajectories; '{name}' is "
            f"a learned solver, which learns its steps from the schedule it starts on. Run it with a named "
            f"schedule (or none: its own default), e.g. select the handcrafted methods with -m, or give "
            f"'{name}' its own schedule under methods: in --config.")
    return True


def tune_schedules(cells: list, teacher, batch_size: int, console: Console) -> None:
    """Give every cell marked ``tuned`` its best schedule on the validation split (module docstring):
    its solver and table, and ``schedule_tuning``, what its record keeps of the choice."""
    pending = [cell for cell in cells if cell.tuned]
    if not pending:
        return
    cache = TrajectoryCache.for_split(teacher, SPLIT)
    console.print(f"{teacher.name}: tuning schedules on {len(cache.seeds):,} {SPLIT} samples "
                  f"(seeds {cache.seeds[0]}-{cache.seeds[-1]}), by {METRIC}")
    cache.generate(on_wait=announce_wait(console, cache.directory, "generating these trajectories"))
    solved = cache.load()
    metric = get_metric(METRIC)
    for cell in pending:
        cls, options = type(cell.solver), cell.solver.config
        scores, tables = {}, {}
        for entry in SCHEDULES:
            try:
                tables[entry.name] = cls(**{**options, "schedule": entry.name}).table(teacher, cell.nfe)
            except GasbenchError:  # a schedule without this many steps (GITS)
                continue
            samples = sample_seeds(teacher, tables[entry.name], list(cache.seeds), batch_size)
            scores[entry.name] = metric.compute(Evaluation(samples, solved["x0"], teacher, solved.get("cond")))
        chosen = min(scores, key=scores.get)
        cell.solver, cell.table = cls(**{**options, "schedule": chosen}), tables[chosen]
        cell.schedule_tuning = {"split": SPLIT, "seeds": [cache.seeds[0], cache.seeds[-1]], "size": len(cache.seeds),
                                "metric": METRIC, "scores": scores, "chosen": chosen}
        console.print(f"{cell.label} NFE {cell.nfe}: {chosen} (" + ", ".join(
            f"{name} {value:.4g}" for name, value in scores.items()) + ")", highlight=False)
