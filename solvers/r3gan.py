"""R3GAN's discriminator (Huang et al., 2024), for GAS on the papers' teachers.

GAS starts from a pretrained R3GAN discriminator for the EDM pixel teachers (the CIFAR-10
checkpoint for CIFAR-10, FFHQ-64 for FFHQ and AFHQv2) and trains one of the FFHQ-64 architecture
at three-quarter width from scratch for latent teachers (GAS Appendix D.4). This module is our
implementation of that architecture with the parameter names of R3GAN's release (``Model.`` +
``ExtractionLayer``, ``MainLayers.i.Layers.j.LinearLayer1`` ...), so the release's pickles load into
it through :mod:`gasbench.safe_pickle` without running their code; the stage layout is read
from the tensor shapes. Forward pass as the release's reference path (no fused CUDA ops):
leaky ReLU 0.2 after a learned bias, [1, 3, 3, 1] low-pass before each 2x downsampling, a 4x4
depthwise "basis" and, for class-conditional checkpoints, the projection on a linear class
embedding.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gasbench.errors import GasbenchError

LEAK = 0.2
ACTIVATION_GAIN = math.sqrt(2 / (1 + LEAK**2))
# GAS's discriminator for latent teachers: the FFHQ-64 layout at three-quarter width
LATENT_LAYOUT = {
    "widths": [3 * w // 4 for w in (512, 1024, 1024, 1024, 1024)],
    "cardinalities": [3 * c for c in (16, 32, 32, 32, 32)],
    "blocks": [2, 2, 2, 2, 2],
    "expansion": 2,
}


def _msr(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0, gain / math.sqrt(fan_in))
    return layer


class Convolution(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, gain: float = 1.0):
        super().__init__()
        self.Layer = _msr(nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False), gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Layer(x)


class BiasedActivation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.Bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.Bias.view(1, -1, 1, 1), LEAK)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, cardinality: int, expansion: int, kernel: int, variance_scaling: int):
        super().__init__()
        hidden = width * expansion
        gain = ACTIVATION_GAIN * variance_scaling ** (-1 / 4)  # three linear layers per block
        self.LinearLayer1 = Convolution(width, hidden, 1, gain=gain)
        self.LinearLayer2 = Convolution(hidden, hidden, kernel, groups=cardinality, gain=gain)
        self.LinearLayer3 = Convolution(hidden, width, 1, gain=0.0)
        self.NonLinearity1 = BiasedActivation(hidden)
        self.NonLinearity2 = BiasedActivation(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.LinearLayer2(self.NonLinearity1(self.LinearLayer1(x)))
        return x + self.LinearLayer3(self.NonLinearity2(y))


class Downsampler(nn.Module):
    """2x down after the normalised outer product of [1, 3, 3, 1] (R3GAN's [1, 2, 1] * [1, 1])."""

    def __init__(self):
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("Kernel", torch.outer(taps, taps) / taps.sum() ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kernel = self.Kernel.view(1, 1, *self.Kernel.shape).to(x.dtype)  # symmetric: correlation = convolution
        y = F.conv2d(x.reshape(b * c, 1, h, w), kernel, stride=2, padding=1)
        return y.view(b, c, y.shape[-2], y.shape[-1])


class DownsampleLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.Resampler = Downsampler()
        if cin != cout:
            self.LinearLayer = Convolution(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Resampler(x)
        return self.LinearLayer(x) if hasattr(self, "LinearLayer") else x


class DiscriminativeBasis(nn.Module):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.Basis = _msr(nn.Conv2d(width, width, 4, groups=width, bias=False))
        self.LinearLayer = _msr(nn.Linear(width, out, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LinearLayer(self.Basis(x).flatten(1))


class DiscriminatorStage(nn.Module):
    def __init__(self, width: int, out: int, cardinality: int, blocks: int, expansion: int, kernel: int,
                 variance_scaling: int, final: bool):
        super().__init__()
        transition = DiscriminativeBasis(width, out) if final else DownsampleLayer(width, out)
        self.Layers = nn.ModuleList(
            [ResidualBlock(width, cardinality, expansion, kernel, variance_scaling) for _ in range(blocks)] + [transition]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.Layers:
            x = layer(x)
        return x


class R3GANBody(nn.Module):
    """R3GAN.Networks.Discriminator, with the input channels as a parameter (3 in the release)."""

    def __init__(self, channels: int, widths: list[int], cardinalities: list[int], blocks: list[int],
                 expansion: int, num_classes: int = 0, embedding: int = 0, kernel: int = 3):
        super().__init__()
        scaling = sum(blocks)
        stages = [DiscriminatorStage(widths[i], widths[i + 1], cardinalities[i], blocks[i], expansion, kernel, scaling, False)
                  for i in range(len(widths) - 1)]
        stages.append(DiscriminatorStage(widths[-1], embedding if num_classes else 1, cardinalities[-1], blocks[-1],
                                         expansion, kernel, scaling, True))
        self.ExtractionLayer = Convolution(channels, widths[0], 1)
        self.MainLayers = nn.ModuleList(stages)
        if num_classes:
            self.EmbeddingLayer = _msr(nn.Linear(num_classes, embedding, bias=False), 1 / math.sqrt(embedding))
        self.resolution = 4 * 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = self.ExtractionLayer(x)
        for stage in self.MainLayers:
            x = stage(x)
        if hasattr(self, "EmbeddingLayer"):
            if cond is None:
                raise GasbenchError("this R3GAN discriminator is class-conditional; the teacher gives no classes.")
            onehot = F.one_hot(cond.long(), self.EmbeddingLayer.in_features).to(x.dtype)
            x = (x * self.EmbeddingLayer(onehot)).sum(1, keepdim=True)
        return x.view(x.shape[0])


class R3GANDiscriminator(nn.Module):
    """The release's ``training.networks.Discriminator`` wrapper: the body under ``Model``."""

    def __init__(self, **layout):
        super().__init__()
        self.Model = R3GANBody(**layout)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.Model(x, cond)


def layout_from_state_dict(state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments of the discriminator whose parameters are ``state`` (keys under ``Model.``)."""
    try:
        extraction = state["Model.ExtractionLayer.Layer.weight"]
        stage_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"Model\.MainLayers\.(\d+)\.", k))})
        widths, cardinalities, blocks, expansion, kernel = [], [], [], 2, 3
        for i in stage_ids:
            first = state[f"Model.MainLayers.{i}.Layers.0.LinearLayer1.Layer.weight"]
            grouped = state[f"Model.MainLayers.{i}.Layers.0.LinearLayer2.Layer.weight"]
            widths.append(first.shape[1])
            expansion, kernel = first.shape[0] // first.shape[1], grouped.shape[-1]
            cardinalities.append(grouped.shape[0] // grouped.shape[1])
            blocks.append(len({k.split(".")[4] for k in state
                               if k.startswith(f"Model.MainLayers.{i}.Layers.") and ".LinearLayer1." in k}))
        embedding = state.get("Model.EmbeddingLayer.weight")
    except (KeyError, IndexError, ValueError) as exc:
        raise GasbenchError(f"the tensors do not form an R3GAN discriminator (missing {exc}).") from None
    return {"channels": extraction.shape[1], "widths": widths, "cardinalities": cardinalities, "blocks": blocks,
            "expansion": expansion, "kernel": kernel,
            "num_classes": 0 if embedding is None else embedding.shape[1],
            "embedding": 0 if embedding is None else embedding.shape[0]}


def load_r3gan_discriminator(path: Path) -> R3GANDiscriminator:
    """The discriminator ``D`` of an R3GAN release pickle (``network-snapshot-*.pkl``), read by the
    restricted unpickler; its code is never imported or executed."""
    from gasbench.safe_pickle import ModuleRecord, flat_state_dict, load_network_pickle

    path = Path(path)
    if not path.is_file():
        raise GasbenchError(f"R3GAN discriminator file {path} does not exist; pass discriminator=PATH to a release pickle.")
    data = load_network_pickle(path, module_prefixes=("training.", "R3GAN.", "torch_utils."))
    record = data.get("D") if isinstance(data, dict) else None
    if not isinstance(record, ModuleRecord):
        raise GasbenchError(f"{path} holds no discriminator 'D' (keys: {sorted(data) if isinstance(data, dict) else type(data).__name__}).")
    state = flat_state_dict(record)
    if not any(k.startswith("Model.") for k in state):
        state = {f"Model.{k}": v for k, v in state.items()}
    network = R3GANDiscriminator(**layout_from_state_dict(state))
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GasbenchError(f"{path}: the discriminator's tensors do not match R3GAN's layout "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return network.float()
