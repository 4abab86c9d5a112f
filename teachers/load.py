"""Build a teacher from what the user typed: a registered name or ``diffusers:<hub id or folder>``.

This is the one place the CLI, the runner and the saved-solver loader turn a teacher name into a
ready :class:`~gasbench.teachers.base.Teacher`: weights (``--weights``), device and precision
applied, the registry's "did you mean" message for unknown names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import TEACHERS

DIFFUSERS_PREFIX = "diffusers:"
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise GasbenchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GasbenchError(f"--device {device} asks for a GPU but torch sees none; use --device cpu.")
    return resolved


def load_teacher(spec: str, weights: Optional[Path] = None, device: str = "cpu", precision: str = "fp32"):
    """The teacher named ``spec`` on ``device``; ``weights`` overrides where its weights come from."""
    if precision not in PRECISIONS:
        raise GasbenchError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if spec.startswith(DIFFUSERS_PREFIX):
        from gasbench.teachers.diffusers_teacher import DiffusersTeacher

        if weights is not None:
            raise GasbenchError("--weights does not apply to a diffusers: teacher; its folder or hub id is the weights.")
        teacher = DiffusersTeacher.from_pretrained(spec[len(DIFFUSERS_PREFIX):])
    else:
        factory = TEACHERS.get(spec)
        teacher = factory() if weights is None else factory(weights=Path(weights))
    teacher.precision = precision
    return teacher.to(resolve_device(device))
