"""The floor: what the solvers, the teachers and the harness all stand on.

Errors, the registry, the record schema, file locks and atomic writes, fault points, weight
resolution, the one restricted unpickler, the distributed primitives, progress, image helpers,
the LPIPS network and the evaluation seeds. Nothing here imports the solvers, the teachers or the
harness (tests/test_layers.py walks the imports).
"""
