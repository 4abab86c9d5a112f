"""Solvers: the shared executor, time-step schedules and every registered method."""

from gasbench.solvers import dlms, gas, gs, handcrafted, ld3, release, s4s, schedules  # noqa: F401  (registers the built-ins)
