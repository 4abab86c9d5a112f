"""Shared test helpers: pickle payloads that would run code, and classes pickled under the names
a real training framework gives them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterator

# the calls a payload can make, each creating ``marker`` when it runs
PAYLOAD_CALLS = ("os.system", "posix.system", "builtins.exec", "builtins.eval", "subprocess.Popen")


class Payload:
    """Unpickled by plain ``pickle``, creates ``marker`` through ``call``. ``os.system`` pickles as
    ``posix.system`` (its own module); the literal ``os.system`` spelling is :func:`raw_os_system`."""

    def __init__(self, call: str, marker: Path):
        self.call, self.marker = call, Path(marker)

    def __reduce__(self):
        touch = f"open({str(self.marker)!r}, 'w').close()"
        return {"posix.system": (os.system, (f"touch {self.marker}",)),
                "builtins.exec": (exec, (touch,)),
                "builtins.eval": (eval, (touch,)),
                "subprocess.Popen": (subprocess.Popen, (["touch", str(self.marker)],))}[self.call]


def raw_os_system(marker: Path) -> bytes:
    """A protocol-0 pickle naming ``os.system`` as attackers write it by hand."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


class ModelCheckpoint:
    """Stands for PyTorch-Lightning's callback class: Lightning 1.4 keys the callback's state in a
    checkpoint's ``callbacks`` by the class itself (``trainer/callback_hook.py``)."""


LIGHTNING_CLASSES = {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": ModelCheckpoint}


@contextlib.contextmanager
def pickled_as(classes: dict[str, type]) -> Iterator[None]:
    """While it lasts, ``pickle`` writes each class under its dotted name (stand-in modules are
    registered for names that are not importable here) and finds it there again."""
    added, replaced = [], []
    for dotted, cls in classes.items():
        module, cls.__qualname__ = dotted.rsplit(".", 1)
        cls.__module__ = module
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        replaced.append((sys.modules[module], cls.__qualname__, getattr(sys.modules[module], cls.__qualname__, None)))
        setattr(sys.modules[module], cls.__qualname__, cls)
    try:
        yield
    finally:
        for module, name, previous in replaced:
            if previous is None:
                delattr(module, name)
            else:
                setattr(module, name, previous)
        for name in reversed(added):
            del sys.modules[name]
