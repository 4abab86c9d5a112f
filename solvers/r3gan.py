"""R3GAN's discriminator (Huang et al., 2024), for GAS on the papers' teachers.

GAS fine-tunes a pretrained R3GAN discriminator for the EDM pixel teachers (the CIFAR-10
checkpoint for CIFAR-10, FFHQ-64 for FFHQ and AFHQv2) and trains one of the FFHQ-64 architecture
at three-quarter width from scratch for latent teachers (GAS Appendix D.4; the release's
``src/gas/adversarial_module/load_discriminator.py:19-56``). This module is our implementation
of that architecture with the parameter names of R3GAN's release (``Model.`` +
``ExtractionLayer``, ``MainLayers.i.Layers.j.LinearLayer1`` ...), so the release's pickles load into
it through :mod:`gasbench.core.safe_pickle` without running their code; the stage layout is read
from the tensor shapes. Forward pass as the release's reference path (no fused CUDA ops):
leaky ReLU 0.2 after a learned bias, [1, 3, 3, 1] low-pass before each 2x downsampling, a 4x4
depthwise "basis" and a linear layer.

The CIFAR-10 checkpoint is class-conditional (R3GAN ``train.py --cond=1``): its last linear layer
has ``ConditionEmbeddingDimension`` = 768 outputs, projected on a linear class embedding
(``Networks.py:171``). GAS's teachers and discriminator are unconditional: the release replaces
the embedding by a module returning the constant 1 (``load_discriminator.py:11-17, 36-37``), so
the logit is the plain sum of those outputs, and passes no classes (``dist_adv_loss.py:69-73``).
:func:`load_r3gan_discriminator` does the same: the embedding's weights are dropped and
:class:`R3GANBody` sums its outputs (one output for unconditional checkpoints).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gasbench.core.errors import GasbenchError
from gasbench.core.weights import WeightsSource, offline, resolve_weights, weights_dir

LEAK = 0.2
ACTIVATION_GAIN = math.sqrt(2 / (1 + LEAK**2))
# GAS's discriminator for latent teachers: the FFHQ-64 layout at three-quarter width
LATENT_LAYOUT = {
    "widths": [3 * w // 4 for w in (512, 1024, 1024, 1024, 1024)],
    "cardinalities": [3 * c for c in (16, 32, 32, 32, 32)],
    "blocks": [2, 2, 2, 2, 2],
    "expansion": 2,
}
# the pretrained discriminators GAS fine-tunes on the pixel teachers (release
# load_discriminator.py:6-9 and configs/edm/*.yaml:39: CIFAR10 for cifar10, FFHQ-64x64 for ffhq
# and afhqv2); the two files share one name upstream, so each is kept under its own here
_HF = "https://huggingface.co/brownvc/R3GAN-{}/resolve/main/network-snapshot-final.pkl"
PRETRAINED = {
    "cifar10": WeightsSource("R3GAN's pretrained class-conditional CIFAR-10 discriminator (Huang et al. 2024, brownvc)",
                             "r3gan-cifar10-network-snapshot-final.pkl", _HF.format("CIFAR10"), None),
    "ffhq": WeightsSource("R3GAN's pretrained FFHQ-64 discriminator (Huang et al. 2024, brownvc)",
                          "r3gan-ffhq-64x64-network-snapshot-final.pkl", _HF.format("FFHQ-64x64"), None),
}
PRETRAINED["afhqv2"] = PRETRAINED["ffhq"]


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
    """R3GAN.Networks.Discriminator, with the input channels as a parameter (3 in the release) and
    the class embedding replaced by the constant 1 as GAS's release does: ``outputs`` is the width
    of the last linear layer (1, or the ``ConditionEmbeddingDimension`` of a class-conditional
    checkpoint) and the logit is the sum of its outputs."""

    def __init__(self, channels: int, widths: list[int], cardinalities: list[int], blocks: list[int],
                 expansion: int, outputs: int = 1, kernel: int = 3):
        super().__init__()
        scaling = sum(blocks)
        stages = [DiscriminatorStage(widths[i], widths[i + 1], cardinalities[i], blocks[i], expansion, kernel, scaling, False)
                  for i in range(len(widths) - 1)]
        stages.append(DiscriminatorStage(widths[-1], outputs, cardinalities[-1], blocks[-1], expansion, kernel, scaling, True))
        self.ExtractionLayer = Convolution(channels, widths[0], 1)
        self.MainLayers = nn.ModuleList(stages)
        self.resolution = 4 * 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One logit per sample; ``cond`` is ignored (GAS's discriminators are unconditional)."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = self.ExtractionLayer(x)
        for stage in self.MainLayers:
            x = stage(x)
        return x.sum(1)  # (x * Constant()(y)).sum(1): the embedding is the constant 1


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
        basis = state[f"Model.MainLayers.{stage_ids[-1]}.Layers.{blocks[-1]}.LinearLayer.weight"]
    except (KeyError, IndexError, ValueError) as exc:
        raise GasbenchError(f"the tensors do not form an R3GAN discriminator (missing {exc}).") from None
    return {"channels": extraction.shape[1], "widths": widths, "cardinalities": cardinalities, "blocks": blocks,
            "expansion": expansion, "kernel": kernel, "outputs": basis.shape[0]}


def load_r3gan_discriminator(path: Path) -> R3GANDiscriminator:
    """The discriminator ``D`` of an R3GAN release pickle (``network-snapshot-*.pkl``), read by the
    restricted unpickler (its code is never imported or executed), with a class embedding replaced
    by the constant 1 as GAS's release does (``load_discriminator.py:36-37``). Module names are
    admitted in the release's spelling and in the older ``BaselineGAN.`` one that R3GAN's
    ``legacy.py:69-72`` (and GAS's copy, ``legacy.py:38-41``) rename."""
    from gasbench.core.safe_pickle import ModuleRecord, flat_state_dict, load_network_pickle

    path = Path(path)
    if not path.is_file():
        raise GasbenchError(f"R3GAN discriminator file {path} does not exist; pass discriminator=PATH to a release pickle.")
    data = load_network_pickle(path, module_prefixes=("training.", "R3GAN.", "BaselineGAN.", "torch_utils."))
    record = data.get("D") if isinstance(data, dict) else None
    if not isinstance(record, ModuleRecord):
        raise GasbenchError(f"{path} holds no discriminator 'D' (keys: {sorted(data) if isinstance(data, dict) else type(data).__name__}).")
    state = flat_state_dict(record)
    if not any(k.startswith("Model.") for k in state):
        state = {f"Model.{k}": v for k, v in state.items()}
    state.pop("Model.EmbeddingLayer.weight", None)  # GAS: EmbeddingLayer = Constant()
    network = R3GANDiscriminator(**layout_from_state_dict(state))
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GasbenchError(f"{path}: the discriminator's tensors do not match R3GAN's layout "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return network.float()


def pretrained_discriminator_file(teacher: str) -> Path:
    """The R3GAN checkpoint GAS fine-tunes for ``teacher`` (:data:`PRETRAINED`), found in
    :func:`~gasbench.core.weights.weights_dir` or downloaded there by :func:`~gasbench.core.weights.resolve_weights`."""
    source = PRETRAINED.get(teacher)
    if source is None:
        raise GasbenchError(
            f"GAS has no pretrained R3GAN discriminator for teacher '{teacher}': the paper fine-tunes one only for "
            f"{', '.join(sorted(PRETRAINED))} (Appendix D.4.1) and trains discriminator=r3gan from scratch for latent "
            f"teachers; use r3gan, compact, or the path of an R3GAN pickle.")
    cached = weights_dir() / source.filename
    try:
        return resolve_weights(source, teacher)[0]
    except GasbenchError:
        if cached.is_file():
            raise  # present but not the pinned file: resolve_weights says so
    why = "downloads are off (GASBENCH_OFFLINE)" if offline() else f"the download from {source.url} failed"
    raise GasbenchError(
        f"GAS on teacher '{teacher}' fine-tunes {source.description}: file {source.filename} is not in {weights_dir()} "
        f"and {why}. Download {source.url} and save it as {cached} (set GASBENCH_HOME to move that directory), "
        f"or pass its path with `--solver-arg discriminator=PATH`.")
