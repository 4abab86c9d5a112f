"""EDM's release pickles (``edm-*.pkl``) read without running them, converted once to safetensors.

The release pickles carry the source of EDM's ``training/networks.py`` (``torch_utils.persistence``)
and run it when unpickled; :func:`load_edm_pickle` never does: it reads them with
:mod:`gasbench.core.safe_pickle`, admits only the class names of :mod:`gasbench.teachers.edm_networks`,
rebuilds the network from the recorded constructor arguments, checks the rebuild against every
recorded attribute, and converts it once to safetensors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from gasbench.core.errors import GasbenchError
from gasbench.core.weights import converted_weights, sha256_of
from gasbench.teachers.edm_networks import NETWORK_CLASSES, PRECONDS, _Precond

# persistent classes a release snapshot holds besides the network (training/augment.py, loss.py):
# read as inert records and never used
OTHER_RELEASE_CLASSES = frozenset({"AugmentPipe", "EDMLoss", "VPLoss", "VELoss"})
TORCH_CONTAINERS = {"torch.nn.modules.container.ModuleDict": nn.ModuleDict}
# constructor arguments that only steer EDM's own sampler (the supported sigma range) and its
# fp16 switch: a gasbench teacher declares its sigma range and runs in the teacher's precision
SAMPLER_ONLY_KWARGS = frozenset({"use_fp16", "sigma_min", "sigma_max", "epsilon_t"})
CONVERTED_KIND = "edm"
CONVERTED_FORMAT = "gasbench.edm.v1"
PERSISTENT_PREFIX = "<persistent>."


def _class_name(record: Any) -> str:
    path = record.class_path
    return path[len(PERSISTENT_PREFIX):] if path.startswith(PERSISTENT_PREFIX) else path


def _records(obj: Any):
    """Every module record reachable from ``obj`` (each once, whatever the pickle shares)."""
    from gasbench.core.safe_pickle import ModuleRecord

    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ModuleRecord):
            yield item
            stack.append(item.state)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _refuse_unknown_classes(data: Any, source: Path) -> None:
    for record in _records(data):
        name = _class_name(record)
        if record.class_path.startswith(PERSISTENT_PREFIX):
            if name not in NETWORK_CLASSES and name not in OTHER_RELEASE_CLASSES:
                raise GasbenchError(
                    f"{source} holds a class '{name}' that gasbench does not implement; refusing it (its embedded "
                    f"source code was not run). gasbench runs EDM's SongUNet networks behind {', '.join(PRECONDS)}.")
        elif record.class_path not in TORCH_CONTAINERS:
            raise GasbenchError(f"{source} holds a '{record.class_path}' module, which EDM's networks do not use; refusing it.")


def _plain(value: Any, where: str) -> Any:
    """A recorded constructor argument as JSON data (numpy scalars become Python numbers)."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise GasbenchError(f"the recorded constructor argument {where} is a {type(value).__name__}, not plain data.")


def _same(recorded: Any, ours: Any) -> bool:
    """Whether a recorded attribute equals the rebuild's plain value (numbers to float32 rounding)."""
    if isinstance(recorded, (list, tuple)) and isinstance(ours, (list, tuple)):
        return len(recorded) == len(ours) and all(_same(a, b) for a, b in zip(recorded, ours))
    if isinstance(recorded, (int, float, np.number)) and isinstance(ours, (int, float)):
        return math.isclose(float(recorded), float(ours), rel_tol=1e-6)
    return isinstance(recorded, (str, type(None))) and recorded == ours


def _check_against_record(record: Any, module: nn.Module, source: Path, where: str = "ema") -> None:
    """The rebuilt ``module`` has the recorded class at every path, and the same value for every
    plain attribute both keep (channels, groups, eps, up/down, heads, skip scale, ...)."""
    name = _class_name(record)
    if NETWORK_CLASSES.get(name, TORCH_CONTAINERS.get(name)) is not type(module):
        raise GasbenchError(f"{source}: '{where}' is a {name} in the release but {type(module).__name__} in "
                            "gasbench's rebuild from the recorded arguments; the network is not one gasbench can run.")
    ours = vars(module)
    for key, value in record.state.items():
        if key.startswith("_") or key == "training" or key not in ours or _same(value, ours[key]):
            continue
        raise GasbenchError(f"{source}: {where}.{key} is {value!r} in the release but {ours[key]!r} in gasbench's "
                            "rebuild from the recorded arguments; the network is not one gasbench can run.")
    children = {k: v for k, v in (record.state.get("_modules") or {}).items() if v is not None}
    mine = {k: v for k, v in module.named_children()}
    if set(children) != set(mine):
        raise GasbenchError(f"{source}: the submodules of '{where}' differ from gasbench's rebuild "
                            f"(release only: {sorted(set(children) - set(mine))[:3]}, "
                            f"rebuild only: {sorted(set(mine) - set(children))[:3]}).")
    for key, child in children.items():
        _check_against_record(child, mine[key], source, f"{where}.{key}")


def build_precond(info: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> _Precond:
    """The network described by ``info`` (class name and constructor arguments, as converted)
    with the tensors of ``state``; every parameter and buffer must be in ``state``."""
    cls = PRECONDS.get(info.get("class_name"))
    if info.get("format") != CONVERTED_FORMAT or cls is None:
        raise GasbenchError(f"{source}: unknown EDM network description {info.get('class_name')!r}; "
                            "delete the converted file under $GASBENCH_HOME/converted and rerun.")
    try:
        net = cls(**info["kwargs"])
    except (TypeError, ValueError) as exc:
        raise GasbenchError(f"{source}: cannot build EDM's {info['class_name']} from its recorded arguments ({exc}).") from None
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise GasbenchError(f"{source}: the tensors do not match {info['class_name']}'s layout ({' '.join(first)}).") from None
    return net


def _convert(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The release pickle's EMA network as (state dict, description), checked against a rebuild."""
    from gasbench.core.safe_pickle import ModuleRecord, flat_state_dict, load_network_pickle

    data = load_network_pickle(path, module_prefixes=())
    _refuse_unknown_classes(data, path)
    ema = data.get("ema") if isinstance(data, dict) else None
    if not isinstance(ema, ModuleRecord) or not ema.class_path.startswith(PERSISTENT_PREFIX):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise GasbenchError(f"{path} holds no EDM network under 'ema' (found {keys}); is it an EDM release pickle?")
    name = _class_name(ema)
    if name not in PRECONDS:
        raise GasbenchError(f"{path}: the network is a {name}; gasbench runs EDM's {', '.join(PRECONDS)}.")
    args, kwargs = ema.state.get("_init_args"), ema.state.get("_init_kwargs")
    if args or not isinstance(kwargs, dict):
        raise GasbenchError(f"{path}: the network's constructor arguments are not recorded as keywords "
                            "(torch_utils.persistence's _init_kwargs); gasbench cannot rebuild it.")
    kwargs = _plain(kwargs, "_init_kwargs")
    info = {
        "format": CONVERTED_FORMAT,
        "class_name": name,
        "kwargs": {k: v for k, v in kwargs.items() if k not in SAMPLER_ONLY_KWARGS},
        "ignored_kwargs": {k: v for k, v in kwargs.items() if k in SAMPLER_ONLY_KWARGS},
    }
    state = flat_state_dict(ema)
    _check_against_record(ema, build_precond(info, state, path), path)
    return state, info


def load_edm_pickle(path: Path, sha256: Optional[str] = None) -> tuple[_Precond, dict[str, Any]]:
    """The EMA network of an EDM release pickle (``edm-*.pkl``, or a snapshot of EDM's training)
    as gasbench's module in eval mode, and its description (class, constructor arguments).

    The first load reads the pickle with the restricted unpickler (nothing in it runs) and caches
    the tensors and description as ``$GASBENCH_HOME/converted/edm-<sha256>.safetensors``; later
    loads of the same file (same ``sha256``) read only that file.
    """
    path = Path(path)
    if sha256 is None:
        if not path.is_file():
            raise GasbenchError(f"EDM network file {path} does not exist.")
        sha256 = sha256_of(path)
    state, info = converted_weights(path, sha256, CONVERTED_KIND, _convert)
    net = build_precond(info, state, path)
    return net.eval().requires_grad_(False), info
