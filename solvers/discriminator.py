"""A compact R3GAN-style discriminator for GAS on the built-in teachers.

R3GAN (Huang et al., 2024, "The GAN is dead; long live the GAN!") builds its discriminator from
ResNeXt-style residual blocks with no normalisation: 1x1 expansion, grouped 3x3 convolution,
1x1 projection, leaky ReLU; the last convolution of each block starts at zero, so every block
starts as the identity and training needs no warm-up tricks. Stages halve the resolution
(average pooling, then a 1x1 convolution to the next width); a depthwise convolution over the
final map and a linear layer give the logit, projected on a class embedding for conditional
teachers. This module keeps that design at the size of an 8x8 or 28x28 teacher (0.1M and
0.4M parameters instead of R3GAN's tens of millions); GAS uses a pretrained R3GAN for the papers' pixel teachers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from gasbench.core.errors import GasbenchError
from gasbench.core.records import write_atomic
from gasbench.core.weights import gasbench_home

LEAK = 0.2


class ResidualBlock(nn.Module):
    """x + project(act(grouped(act(expand(x))))), with ``project`` initialised to zero."""

    def __init__(self, width: int, cardinality: int, expansion: int = 2):
        super().__init__()
        hidden = width * expansion
        self.expand = nn.Conv2d(width, hidden, 1)
        self.grouped = nn.Conv2d(hidden, hidden, 3, padding=1, groups=cardinality)
        self.project = nn.Conv2d(hidden, width, 1, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(x), LEAK)
        h = F.leaky_relu(self.grouped(h), LEAK)
        return x + self.project(h)


class CompactDiscriminator(nn.Module):
    """D(x, class) -> one logit per sample, for samples of shape (channels, height, width).

    The number of stages grows with the resolution (one per halving down to about 4x4), widths
    double per stage from ``width`` (capped at 8 x ``width``).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int = 0, width: int = 32,
                 blocks_per_stage: int = 2, cardinality: int = 8, embedding: int = 64):
        super().__init__()
        channels, *size = shape
        stages = 1 + max(0, int(math.log2(max(min(size), 4) / 4)))
        widths = [min(width * 2**i, width * 8) for i in range(stages)]
        self.stem = nn.Conv2d(channels, widths[0], 1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            layers += [ResidualBlock(w, cardinality) for _ in range(blocks_per_stage)]
            if i + 1 < len(widths):
                layers += [nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(w, widths[i + 1], 1)]
                size = [math.ceil(s / 2) for s in size]
        self.stages = nn.Sequential(*layers)
        self.basis = nn.Conv2d(widths[-1], widths[-1], tuple(size), groups=widths[-1], bias=False)
        self.head = nn.Linear(widths[-1], embedding if num_classes else 1)
        self.class_embedding = nn.Embedding(num_classes, embedding) if num_classes else None

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), LEAK)
        h = self.basis(self.stages(h)).flatten(1)
        out = self.head(h)
        if self.class_embedding is None:
            return out.squeeze(1)
        if cond is None:
            raise ValueError("this discriminator is class-conditional; pass the class labels")
        return (out * self.class_embedding(cond)).sum(1) / math.sqrt(out.shape[1])


# --- a compact discriminator pre-trained on a teacher's domain -----------------------------------
# GAS fine-tunes a discriminator R3GAN pre-trained on the teacher's dataset (Appendix D.4.1); the
# built-in teachers have none, so `gasbench bench pretrain-discriminator` trains this one on the
# teacher's samples and GAS's ``discriminator=compact-pretrained`` starts from it.


def pretrained_compact_file(teacher) -> Path:
    """Where the pre-trained compact discriminator of ``teacher`` lives (under $GASBENCH_HOME)."""
    return gasbench_home() / "discriminators" / f"{teacher.name}-compact.safetensors"


def save_compact(discriminator: CompactDiscriminator, teacher, path: Path, provenance: dict) -> None:
    """The weights, with what they were built for (teacher, its weights, architecture) and how."""
    meta = {"teacher": teacher.name, "teacher_sha256": str(getattr(teacher, "weights_sha256", None)),
            "shape": json.dumps(list(teacher.shape)), "num_classes": str(getattr(teacher, "num_classes", 0)),
            "width": str(discriminator.stem.out_channels), "provenance": json.dumps(provenance, sort_keys=True)}
    state = {k: v.detach().contiguous().cpu() for k, v in discriminator.state_dict().items()}
    write_atomic(path, save(state, metadata=meta))


def load_compact(teacher, path: Optional[Path] = None) -> CompactDiscriminator:
    """The pre-trained compact discriminator of ``teacher``; one message if it is missing or was
    trained for another teacher."""
    path = Path(path) if path is not None else pretrained_compact_file(teacher)
    if not path.is_file():
        raise GasbenchError(f"no pre-trained discriminator for '{teacher.name}' at {path}; make it with "
                            f"`gasbench bench pretrain-discriminator -d {teacher.name}`.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if (meta.get("teacher"), meta.get("teacher_sha256")) != (teacher.name, str(getattr(teacher, "weights_sha256", None))):
        raise GasbenchError(f"{path} was pre-trained for teacher {meta.get('teacher')!r} with other weights; "
                            f"re-run `gasbench bench pretrain-discriminator -d {teacher.name}`.")
    discriminator = CompactDiscriminator(tuple(json.loads(meta["shape"])), int(meta["num_classes"]), int(meta["width"]))
    discriminator.load_state_dict(load_file(str(path)))
    return discriminator
