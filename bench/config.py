"""`gasbench run --config FILE.yaml`: every `run` option from a YAML file.

Keys are the long option names of `gasbench run` with dashes or underscores (``dataset``,
``methods``, ``nfe``, ``num_samples``, ``solver_args``, ...); options given on the command line
win over the file. ``methods`` is a list of names, or a mapping from a method name to its own
options (``gas: {adv_weight: 1.0, train_size: 5000}``), which the command line cannot express.
The papers' configurations ship with gasbench (``bench/configs/paper/``: GAS Appendix D.4 for GS
and GAS, the other methods of GAS Table 2 with their own papers' settings) and are found by their
relative name, ``--config paper/cifar10_gs.yaml``. The
file is read with ``yaml.safe_load`` (no Python objects), and the resolved configuration is
stored in every record (``run_config``).
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

import yaml

from gasbench.core.errors import GasbenchError

# YAML key -> (RunConfig field, expected type description)
KEYS = {
    "dataset": "teacher", "methods": "methods", "nfe": "nfes", "seed": "seed", "num_samples": "num_samples",
    "batch_size": "batch_size", "results_dir": "results_dir", "schedule": "schedule", "solver_args": "solver_args",
    "metrics": "metrics", "seeds": "seed_sets", "overwrite": "overwrite", "weights": "weights", "device": "device",
    "precision": "precision", "reference_images": "reference_images", "budget": "budget", "matched_to": "matched_to",
    "threads": "threads",
}


PACKAGED = Path(__file__).parent / "configs"


def locate(path: Path) -> Path:
    """``path`` itself, else the same relative path among the configurations shipped with
    gasbench (``paper/cifar10_gs.yaml``)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (PACKAGED / path).is_file():
        return PACKAGED / path
    return path


def read_config(path: Path) -> dict[str, Any]:
    """The file's options under their YAML keys, checked: a mapping, known keys only."""
    path = locate(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GasbenchError(f"--config {path}: cannot read it ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise GasbenchError(f"--config {path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GasbenchError(f"--config {path} must be a mapping of `gasbench run` options, found a {type(data).__name__}.")
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in KEYS:
            close = difflib.get_close_matches(name, KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GasbenchError(f"--config {path}: unknown option '{key}'.{hint} Known: {', '.join(KEYS)}.")
        options[name] = value
    return options


def split_methods(methods: Any, source: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``methods`` of a config: a list (or comma-separated string) of names, or a mapping name ->
    options; returns the names and the per-method options."""
    if methods is None:
        return [], {}
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()], {}
    if isinstance(methods, list) and all(isinstance(m, str) for m in methods):
        return list(methods), {}
    if isinstance(methods, dict):
        per_method = {}
        for name, options in methods.items():
            if options is not None and not isinstance(options, dict):
                raise GasbenchError(f"{source}: the options of method '{name}' must be a mapping, got {options!r}.")
            per_method[str(name)] = dict(options or {})
        return list(per_method), per_method
    raise GasbenchError(f"{source}: 'methods' must be a list of names or a mapping name -> options, got {methods!r}.")


def file_provenance(path: Path) -> dict[str, str]:
    """What a record says about the config file it came from."""
    path = locate(path)
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
