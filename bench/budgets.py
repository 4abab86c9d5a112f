"""Training budgets: what a learned method is given, named and recorded (``gasbench run --budget``).

* ``cpu``: the options' defaults, the CPU budgets of the built-in teachers (default there), with
  the same early-stopping rule for every method (:mod:`gasbench.solvers.fit`);
* ``paper``: each method's own paper's and released code's settings on the papers' teachers
  (:meth:`~gasbench.solvers.learned.LearnedSolver.paper_budget`; default there);
* ``matched``: every method keeps its own settings under the teacher's default budget but gets the
  reference method's (GS by default) training pairs and, by its iteration count, the reference's
  student network passes to within half an iteration (forward + backward per sample, counted at the denoiser), so a
  leaderboard compares methods at equal training compute.

Under ``paper`` and ``matched`` a fit runs its full iteration count (``patience = 0``): the papers
train a fixed count, and a matched budget is a count of passes.

What a fit actually spent (iterations, passes, teacher solves) is in each record's ``training``.
"""

from __future__ import annotations

from typing import Any, Optional

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS, default_run_solvers

BUDGETS = ("cpu", "paper", "matched")
DEFAULT_REFERENCE = "gs"


FULL_COUNT = {"patience": 0}  # no early stopping


def _own_budget(cls, budget: str, teacher) -> dict[str, Any]:
    return {**FULL_COUNT, **cls.paper_budget(teacher)} if budget == "paper" else {}


def budget_options(cls, budget: str, teacher, nfe: int, reference: str = DEFAULT_REFERENCE,
                   reference_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The options ``budget`` sets for the learned solver class ``cls`` on ``teacher`` at ``nfe``
    (the run's own options for the method are applied over them). ``reference_options``: the
    run's own options for the reference method, so ``matched`` matches it as this run trains it."""
    if budget not in BUDGETS:
        raise GasbenchError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}.")
    if budget != "matched":
        return _own_budget(cls, budget, teacher)
    ref_cls = SOLVERS.get(reference)
    if not getattr(ref_cls, "learned", False):
        raise GasbenchError(f"--matched-to {reference}: a matched budget needs a learned reference method (e.g. gs).")
    ref = ref_cls(**{**_own_budget(ref_cls, teacher.default_budget, teacher), **(reference_options or {})})
    target = ref.config["iterations"] * ref.passes_per_iteration(nfe)
    options = {**_own_budget(cls, teacher.default_budget, teacher), **FULL_COUNT, "train_size": ref.config["train_size"]}
    per_iteration = cls(**options).passes_per_iteration(nfe)
    return {**options, "iterations": max(1, round(target / per_iteration))}


def budget_rows(teacher, nfe: int, reference: str = DEFAULT_REFERENCE) -> list[dict[str, Any]]:
    """Every learned method of the default run under each budget on ``teacher`` at ``nfe``: the
    numbers ``gasbench budgets`` prints (the one place the budgets are stated)."""
    from gasbench.core.seeds import SPLIT_SIZES

    rows = []
    for entry in default_run_solvers():
        cls = entry.obj
        if not getattr(cls, "learned", False):
            continue
        for budget in BUDGETS:
            solver = cls(**budget_options(cls, budget, teacher, nfe, reference))
            cfg = solver.config
            rows.append({
                "method": entry.name, "budget": budget + (" (default)" if budget == teacher.default_budget else ""),
                "train pairs": cfg["train_size"], "validation pairs": cls.validation_size or SPLIT_SIZES["validation"],
                "batch": cfg["batch_size"], "iterations": cfg["iterations"],
                "early stop": f"patience {cfg['patience']}, every {cfg['validate_every']}" if cfg["patience"] else "no",
                "loss": cfg["loss"], "lr": cfg["lr"],
                f"passes at NFE {nfe}": cfg["iterations"] * solver.passes_per_iteration(nfe),
            })
    return rows
