"""The Solver contract and the generic handcrafted solver built from a traced sampling loop.

A solver maps (teacher, noise x_T, condition, NFE) to samples. Every solver produces a
:class:`~gasbench.solvers.executor.SolverTable` and is run by the one executor, so NFE counting,
timing and the arithmetic are shared. Learned solvers (GS/GAS, S4S, LD3, DLMS) extend
:class:`Solver` with ``fit`` and a saved state; handcrafted ones are a sampling loop registered
with :func:`handcrafted_solver`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.solvers.executor import SolverTable, trace
from gasbench.solvers.schedules import PaperSchedule, make_sigmas


class Solver(ABC):
    """Base class of every method in the leaderboard.

    Subclasses set ``options`` (name -> default) and implement :meth:`table`. Options come from
    the CLI as strings (``--solver-arg order=2``) and are converted to the default's type.
    """

    name: ClassVar[str] = ""
    learned: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {"schedule": None}
    choices: ClassVar[dict[str, tuple]] = {}

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise GasbenchError(
                f"solver '{self.name}' has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(self.options))}."
            )
        self.config = {k: _coerce(self.name, k, options.get(k, v), v) for k, v in self.options.items()}
        for key, allowed in self.choices.items():
            if self.config[key] not in allowed:
                raise GasbenchError(
                    f"solver '{self.name}' supports {key} in {list(allowed)}, got {self.config[key]!r}."
                )

    @abstractmethod
    def table(self, teacher, nfe: int) -> SolverTable:
        """The coefficient table for ``teacher`` at exactly ``nfe`` denoiser evaluations."""

    def default_schedule(self, teacher) -> str:
        """The schedule when none is asked for: the teacher's (learned solvers start from it)."""
        return teacher.default_schedule

    def resolved_config(self, teacher) -> dict[str, Any]:
        """The options with teacher-dependent defaults filled in, as recorded in results."""
        config = dict(self.config)
        if config.get("schedule") is None and "schedule" in config:
            config["schedule"] = self.default_schedule(teacher)
        return config

    def config_hash(self, teacher) -> str:
        blob = json.dumps({"solver": self.name, **self.resolved_config(teacher)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def code_sha256(cls) -> str:
        """sha256 (16 hex digits) of the source files this solver's results depend on: the modules
        of its class and base classes (a handcrafted solver's loop module; a plugin's own file) and
        the ``gasbench.solvers`` modules, or modules of the plugin's own package, they import,
        transitively (executor, schedules, learned, ...). Read once per process, when first asked
        (before any sampling), so it names the code that ran. An edit anywhere in one of these files
        counts; a solver defined where there is no file (an interactive session) hashes nothing."""
        return _code_sha256(cls)


@functools.cache
def _code_sha256(cls: type) -> str:
    # by content, not module name: a plugin file imported under another name is the same code
    digests = sorted(hashlib.sha256(source).hexdigest() for source in _code_sources(cls).values())
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def _code_sources(cls: type) -> dict[str, bytes]:
    """Module name -> source of the modules :meth:`Solver.code_sha256` covers."""
    own = cls.__module__.split(".")[0] + "."
    follow = ("gasbench.solvers.",) if own == "gasbench." else ("gasbench.solvers.", own)
    pending = [c.__module__ for c in cls.__mro__[: cls.__mro__.index(Solver) + 1]]
    sources: dict[str, bytes] = {}
    while pending:
        name = pending.pop()
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if name in sources or path is None:
            continue
        sources[name] = Path(path).read_bytes()
        if path.endswith(".py"):
            pending += [dep for dep in _imported(sources[name], module.__package__) if dep.startswith(follow)]
    return sources


def _imported(source: bytes, package: str | None) -> set[str]:
    """Every name an import statement of ``source`` may bind to a module (``from a import b``: a
    and a.b), relative imports resolved against ``package``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and not package:
                continue
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return names


def _coerce(solver: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # a YAML config's `1` for a float option is the same configuration as 1.0
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return type(default)(value)
    except ValueError:
        raise GasbenchError(
            f"option {key}={value!r} of solver '{solver}' is not a valid "
            f"{type(default).__name__}."
        ) from None


class HandcraftedSolver(Solver):
    """A sampling loop ``loop(model, x, sigmas, **params)`` on a named schedule, traced to a table."""

    loop: ClassVar[Callable]
    evals_per_step: ClassVar[int] = 1
    # the schedule of the solver's own paper: a name, or a rule of the teacher (PaperSchedule);
    # None: the teacher's default schedule
    paper_schedule: ClassVar[str | PaperSchedule | None] = None

    def default_schedule(self, teacher) -> str:
        """Without ``schedule``: the one its paper uses for a teacher like this (``paper_schedule``)."""
        rule = self.paper_schedule
        if rule is None:
            return super().default_schedule(teacher)
        return rule if isinstance(rule, str) else rule(teacher)

    def steps_for(self, nfe: int) -> int:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        if nfe % self.evals_per_step:
            raise GasbenchError(
                f"solver '{self.name}' makes {self.evals_per_step} denoiser evaluations per step, "
                f"so it cannot run at NFE {nfe}; use a multiple of {self.evals_per_step}."
            )
        return nfe // self.evals_per_step

    def table(self, teacher, nfe: int) -> SolverTable:
        config = self.resolved_config(teacher)
        sigmas = make_sigmas(config.pop("schedule"), self.steps_for(nfe), teacher)
        table = trace(type(self).loop, sigmas, **config)
        if table.nfe != nfe:
            raise GasbenchError(
                f"solver '{self.name}' made {table.nfe} evaluations where {nfe} were asked."
            )
        return table


def handcrafted_solver(
    name: str,
    *,
    description: str = "",
    aliases: tuple[str, ...] = (),
    evals_per_step: int = 1,
    choices: dict[str, tuple] | None = None,
    paper_schedule: str | PaperSchedule | None = None,
    **defaults: Any,
) -> Callable[[Callable], Callable]:
    """Register a sampling loop as a solver named ``name``.

    The loop's keyword arguments become the solver's options (with ``defaults`` overriding the
    loop's own), plus ``schedule`` (default: ``paper_schedule``, a schedule's name or a
    :class:`~gasbench.solvers.schedules.PaperSchedule` rule of the teacher, else the teacher's
    schedule); ``choices`` restricts an option to the listed values. Returns the loop unchanged,
    so it can still be called directly on tensors.
    """

    def wrap(loop: Callable) -> Callable:
        params = {
            p.name: p.default
            for p in inspect.signature(loop).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        unknown = set(defaults) - set(params)
        if unknown:
            raise TypeError(f"{loop.__name__} has no keyword parameter(s) {sorted(unknown)}")
        cls = type(
            f"Handcrafted_{loop.__name__}",
            (HandcraftedSolver,),
            {
                "name": name,
                "loop": staticmethod(loop),
                "evals_per_step": evals_per_step,
                "options": {"schedule": None, **params, **defaults},
                "choices": choices or {},
                "paper_schedule": paper_schedule,
                "__doc__": description or inspect.getdoc(loop),
                "__module__": loop.__module__,
            },
        )
        summary = description or (inspect.getdoc(loop) or "").split("\n")[0]
        SOLVERS.register(name, cls, summary, aliases)
        return loop

    return wrap
