"""Teachers: the Teacher contract, built-in teachers and loaders for pretrained networks."""

from gasbench.teachers import builtin, edm, gmm, ldm, sd15  # noqa: F401  (registers the built-ins)
