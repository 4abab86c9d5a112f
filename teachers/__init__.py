"""Teachers: the Teacher contract, built-in teachers and loaders for pretrained networks."""

from gasbench.teachers import builtin, edm, gmm  # noqa: F401  (registers the built-ins)
