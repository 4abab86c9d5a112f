"""Read network pickles (StyleGAN/EDM/R3GAN style) without running the code they carry.

Research releases ship networks as pickles of whole modules: plain ``pickle.load`` imports the
classes they name and, for ``torch_utils.persistence`` pickles, executes the module source
embedded in the file. This reader never does either. Classes named in the pickle become inert
:class:`ModuleRecord` objects that keep only their attribute dictionaries; tensors are rebuilt by
torch's own storage functions (storages through ``torch.load(weights_only=True)``); numpy
scalars and arrays (EDM records ``np.sqrt(0.5)`` among its constructor arguments) are rebuilt from
their raw bytes, for plain numeric dtypes only; a persistence record keeps its class name and
state and its embedded source is never looked at. Any other global (``os.system``,
``builtins.eval``, other ``numpy`` functions, ...) stops the load with a
:class:`~gasbench.errors.GasbenchError` naming it. The caller then builds its own module (its
own code) and copies the tensors in with :func:`flat_state_dict`.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch

from gasbench.errors import GasbenchError

PERSISTENCE_RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class ModuleRecord:
    """What a pickled object of an admitted class leaves behind: its class name and state."""

    def __init__(self, class_path: str, state: Any = None):
        self.class_path = class_path
        self.state = state if state is not None else {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]  # (dict, slots) of objects with __slots__
        self.state = state

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_path})"


def _record_class(class_path: str) -> type:
    """A stand-in class for ``class_path``: instantiating it (NEWOBJ/REDUCE) makes a record."""

    def new(cls, *args, **kwargs):
        return ModuleRecord(class_path)

    return type(class_path.rsplit(".", 1)[-1], (), {"__new__": new})


def _persistent_record(meta: dict) -> ModuleRecord:
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``: keep class name and state,
    never the embedded ``module_src``."""
    if not isinstance(meta, dict) or "class_name" not in meta:
        raise GasbenchError("malformed torch_utils.persistence record in the pickle.")
    return ModuleRecord(f"<persistent>.{meta['class_name']}", meta.get("state", {}))


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# numpy's pickles name dtypes by a kind letter and byte count ("f8", "i4", "u1", "b1", "c16");
# object, string, void and datetime kinds are refused
_NUMERIC_DTYPE = re.compile(r"[biufc][0-9]{1,2}")


class _NumpyDType:
    """``numpy.dtype(code, align, copy)`` as a pickle calls it: a plain numeric dtype whose
    pickled state may set the byte order and nothing else (no fields, no subarrays, no flags)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or not _NUMERIC_DTYPE.fullmatch(code):
            raise GasbenchError(f"the pickle asks for a numpy dtype {code!r}; only plain numeric dtypes are admitted.")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byte order, subarray, names, fields, itemsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and all(part is None for part in state[2:5])):
            raise GasbenchError("the pickle gives a numpy dtype a structured or unknown state; refusing it.")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: Any, data: Any = None):
    if not (isinstance(dtype, _NumpyDType) and isinstance(data, bytes) and len(data) == dtype.dtype.itemsize):
        raise GasbenchError("malformed numpy scalar in the pickle.")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


class _NumpyArray(np.ndarray):
    """An ndarray rebuilt from its pickled raw bytes; numpy's own ``__setstate__`` only ever
    sees a numeric dtype and a bytes buffer."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDType)
                and isinstance(state[4], bytes)):
            raise GasbenchError("malformed numpy array in the pickle (only numeric arrays stored as bytes are admitted).")
        version, shape, dtype, fortran_order, data = state
        super().__setstate__((version, shape, dtype.dtype, bool(fortran_order), data))


class _NumpyArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle; only :func:`_numpy_reconstruct` accepts it."""


def _numpy_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _NumpyArray:
    if cls is not _NumpyArrayClass:
        raise GasbenchError("the pickle asks numpy to reconstruct something other than an ndarray; refusing it.")
    return _NumpyArray((0,), dtype=np.uint8)


_ADMITTED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("dnnlib.util", "EasyDict"): dict,  # the configuration dicts of StyleGAN-family pickles
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NumpyArrayClass,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x spellings
    _ADMITTED_GLOBALS[_core, "scalar"] = _numpy_scalar
    _ADMITTED_GLOBALS[_core, "_reconstruct"] = _numpy_reconstruct
# R3GAN's stages record their compute dtype (R3GAN Networks.py:119): inert torch.dtype values
for _dtype in ("float32", "float16", "bfloat16"):
    _ADMITTED_GLOBALS["torch", _dtype] = getattr(torch, _dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, module_prefixes: tuple[str, ...], source: str):
        super().__init__(file)
        self.module_prefixes, self.source = module_prefixes, source

    def find_class(self, module: str, name: str):
        if (module, name) in _ADMITTED_GLOBALS:
            return _ADMITTED_GLOBALS[module, name]
        if (module, name) == PERSISTENCE_RECONSTRUCT:
            return _persistent_record
        if module.startswith(self.module_prefixes) and name[:1].isupper():
            return _record_class(f"{module}.{name}")
        raise GasbenchError(
            f"{self.source} asks to load '{module}.{name}', which a network pickle has no reason to "
            f"run; refusing it (the file may be malicious or of an unknown format). Nothing from it was executed."
        )


def load_network_pickle(source: Union[Path, bytes], module_prefixes: Iterable[str]) -> Any:
    """Unpickle ``source`` with only tensors, dicts and records of classes under
    ``module_prefixes`` (plus torch.nn's own modules) admitted."""
    prefixes = tuple(module_prefixes) + ("torch.nn.modules.",)
    name = str(source) if isinstance(source, Path) else "the pickle"
    data = Path(source).read_bytes() if isinstance(source, Path) else source
    try:
        return _RestrictedUnpickler(io.BytesIO(data), prefixes, name).load()
    except GasbenchError:
        raise
    except Exception as exc:  # truncated or corrupt: one message, no traceback
        raise GasbenchError(f"{name} is not a readable network pickle ({type(exc).__name__}: {exc}).") from None


def flat_state_dict(record: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict()`` the recorded module would have: its ``_parameters`` and ``_buffers``
    under dotted names, submodules from ``_modules`` (buffers listed as non-persistent skipped)."""
    if not isinstance(record, ModuleRecord) or not isinstance(record.state, dict):
        raise GasbenchError(f"expected a pickled torch module at '{prefix or 'top level'}', found {type(record).__name__}.")
    state, out = record.state, {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach()
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skipped:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(flat_state_dict(child, f"{prefix}{name}."))
    return out
