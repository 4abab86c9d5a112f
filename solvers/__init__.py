"""Solvers: the shared executor, time-step schedules and every registered method."""

from gasbench.solvers import gs, handcrafted, schedules  # noqa: F401  (registers the built-ins)
