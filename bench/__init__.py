"""gasbench: train, sample and score fast diffusion ODE solvers on the same teachers and seeds.

Importing the package is cheap; solvers, teachers and metrics register themselves when a
registry is first queried (see :mod:`gasbench.core.registry`).
"""

__version__ = "0.1.0"
