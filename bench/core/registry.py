"""Name -> object registries for solvers, teachers, schedules and metrics.

Usage::

    from gasbench.core.registry import register_solver, SOLVERS

    @register_solver("my-solver", description="What it does, in one line.")
    class MySolver(Solver): ...

    SOLVERS.get("my-solver")      # the registered object
    SOLVERS.get("my-solvr")       # GasbenchError: Unknown solver 'my-solvr'. Did you mean: my-solver?

Built-in entries register when their module is imported; the first lookup imports the built-in
modules and every external plugin declared under the entry-point groups ``gasbench.solvers``,
``gasbench.teachers``, ``gasbench.schedules`` and ``gasbench.metrics``. A plugin's entry point names
a module (``"my_pkg.solvers"``) or an attribute (``"my_pkg.solvers:MySolver"``); loading it is
enough, because the module registers its objects with the decorators below. A name is taken
once: registering a taken name or alias (a plugin's ``dpmpp2m``) is an error naming both places,
unless the same file registers it again (a file imported twice).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from gasbench.core.errors import GasbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    aliases: tuple[str, ...]
    origin: str  # file:line (file alone when the line is unknown), or the module's name
    source: str  # the file that registered it, or the module's name: who may register it again


class Registry(Generic[T]):
    """A named collection with aliases, "did you mean" lookups and plugin discovery."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...], entry_point_group: str):
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(
        self, name: str, obj: T, description: str = "", aliases: tuple[str, ...] = ()
    ) -> T:
        name = name.lower()
        origin = source = _source(obj)
        try:
            origin = f"{source}:{inspect.getsourcelines(obj)[1]}"
        except (TypeError, OSError):  # a class made at run time (a handcrafted solver's) has no lines
            pass
        if not description:
            description = (inspect.getdoc(obj) or "").strip().splitlines()[0:1]
            description = description[0] if description else ""
        with self._lock:
            # a name is taken for good: a plugin never replaces a built-in or another plugin's
            # entry (whose records it would then write); only a file imported again re-registers
            for key in (name, *aliases):
                owner = self._aliases.get(key.lower())
                if owner is not None and (owner != name or self._entries[owner].source != source):
                    raise GasbenchError(
                        f"{self.kind} name '{key}' is already registered by '{owner}' "
                        f"({self._entries[owner].origin}); {origin} registers it again. A name "
                        f"stands for one {self.kind}: register yours under another name."
                    )
            self._entries[name] = Entry(name, obj, description, tuple(aliases), origin, source)
            for key in (name, *aliases):
                self._aliases[key.lower()] = name
        return obj

    def decorator(
        self, name: str, description: str = "", aliases: tuple[str, ...] = ()
    ) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            return self.register(name, obj, description, aliases)

        return wrap

    def load(self) -> None:
        """Import the built-in modules and the installed plugins (once)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)
            for ep in importlib.metadata.entry_points(group=self._group):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must not break the suite
                    raise GasbenchError(
                        f"the {self.kind} plugin '{ep.name}' ({ep.value}) failed to load: {exc}. "
                        f"Fix or uninstall the package that declares it."
                    ) from exc

    def resolve(self, name: str) -> Entry[T]:
        self.load()
        key = self._aliases.get(name.lower())
        if key is None:
            choices = sorted(self._aliases)
            close = difflib.get_close_matches(name.lower(), choices, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise GasbenchError(
                f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(self.names())}. "
                f"`gasbench list` describes them."
            )
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.resolve(name).obj

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        self.load()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        self.load()
        return name.lower() in self._aliases

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (plugins reloaded in tests)."""
        with self._lock:
            entry = self._entries.pop(name.lower(), None)
            if entry is not None:
                for key in (entry.name, *entry.aliases):
                    self._aliases.pop(key.lower(), None)


def _source(obj: Any) -> str:
    try:
        return inspect.getsourcefile(obj) or obj.__module__
    except TypeError:
        return getattr(obj, "__module__", "?")


SOLVERS: Registry[Any] = Registry("solver", ("gasbench.solvers",), "gasbench.solvers")
TEACHERS: Registry[Any] = Registry("teacher", ("gasbench.teachers",), "gasbench.teachers")
SCHEDULES: Registry[Any] = Registry("schedule", ("gasbench.solvers.schedules",), "gasbench.schedules")
METRICS: Registry[Any] = Registry("metric", ("gasbench.metrics",), "gasbench.metrics")

register_solver = SOLVERS.decorator
register_teacher = TEACHERS.decorator
register_schedule = SCHEDULES.decorator
register_metric = METRICS.decorator


def default_run_solvers() -> list[Entry]:
    """The solvers `gasbench run` takes without ``-m``: every registered one but those that need
    something imported first (the GAS authors' students: ``in_default_run = False``)."""
    return [entry for entry in SOLVERS if getattr(entry.obj, "in_default_run", True)]


def import_plugin(spec: str) -> None:
    """Import a plugin given as a dotted module name or a path to a ``.py`` file."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise GasbenchError(f"plugin file '{spec}' does not exist.")
            module_name = f"gasbench_plugin_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except GasbenchError:
        raise
    except Exception as exc:
        raise GasbenchError(f"plugin '{spec}' failed to import: {exc}") from exc
