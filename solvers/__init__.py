"""Solvers: the shared executor, time-step schedules and every registered method."""

from gasbench.solvers import gas, gs, handcrafted, schedules  # noqa: F401  (registers the built-ins)
