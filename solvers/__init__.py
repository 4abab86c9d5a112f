"""Solvers: the shared executor, time-step schedules and every registered method."""

from gasbench.solvers import handcrafted, schedules  # noqa: F401  (registers the built-ins)
