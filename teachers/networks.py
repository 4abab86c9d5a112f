"""A small DDPM++-style UNet with the EDM preconditioning, and its safetensors file format.

References: Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM, NeurIPS 2022), Table 1 and Sec. 5; Song et al., "Score-Based Generative
Modeling through Stochastic Differential Equations" (2021) for the DDPM++ block layout.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save

from torch import nn

from gasbench.core.records import write_atomic
from gasbench.teachers.preconditioning import edm_scalings

# safetensors serialises its metadata map in arbitrary order, so all fields go, as one JSON object
# with sorted keys, under a single key: the same weights and fields then give the same bytes.
METADATA_KEY = "gasbench"
CONFIG_METADATA_KEY = "unet_config"
FORMAT_METADATA_KEY = "format"
FILE_FORMAT = "gasbench.edm_precond.v1"
MAX_FOURIER_FREQUENCY = 100.0  # rad per unit of c_noise = ln(sigma) / 4, see NoiseEmbedding
SKIP_SCALE = 1.0 / math.sqrt(2.0)  # DDPM++ rescales every residual sum to keep unit variance


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`SmallUNet` plus the data standard deviation of EDM Table 1.

    ``channel_mult[i] * model_channels`` channels are used at resolution
    ``img_resolution / 2**i``; ``num_classes == 0`` makes the network unconditional.
    """

    img_channels: int
    img_resolution: int
    num_classes: int = 0
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    emb_dim: int = 256
    dropout: float = 0.0
    attention: bool = True
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty and positive: {self.channel_mult}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``UNetConfig.from_dict(c.to_dict()) == c``."""
        data = asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        return cls(**data)


def _group_count(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """The largest GroupNorm group count that divides ``channels`` (DDPM++ uses up to 32)."""
    groups = min(max_groups, max(1, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return groups


def _normalization(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_group_count(channels), channels, eps=1e-6)


def _zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights (and bias) so that a residual branch starts as the identity."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class NoiseEmbedding(nn.Module):
    """Fourier features [cos(w c_noise), sin(w c_noise)] of the EDM noise input c_noise.

    EDM Table 1 feeds the network c_noise = ln(sigma) / 4, which spans roughly [-1.6, 1.1] for
    sigma in [0.002, 80]; frequencies are log-spaced in [1, MAX_FOURIER_FREQUENCY] rad so that
    both coarse and fine changes of the noise level are resolved.
    """

    def __init__(self, num_features: int):
        super().__init__()
        if num_features % 2:
            raise ValueError(f"num_features must be even, got {num_features}")
        frequencies = torch.logspace(0.0, math.log10(MAX_FOURIER_FREQUENCY), num_features // 2)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        phases = c_noise.to(torch.float32)[:, None] * self.frequencies[None, :]
        return torch.cat([phases.cos(), phases.sin()], dim=1)


class ResBlock(nn.Module):
    """DDPM++ residual block: GroupNorm-SiLU-Conv, + embedding bias, GroupNorm-SiLU-Dropout-Conv."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm_in = _normalization(in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm_out = _normalization(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv_out(self.dropout(F.silu(self.norm_out(h))))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels, added residually (DDPM++ attention block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _normalization(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        h = attended.transpose(1, 2).reshape(batch, channels, height, width)
        return (x + self.proj(h)) * SKIP_SCALE


class Downsample(nn.Module):
    """Halve the resolution (rounding up, so odd sizes such as 7x7 work) with a strided conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the size of the matching skip, followed by a conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class SmallUNet(nn.Module):
    """The raw network F of EDM Eq. 7: a small DDPM++-flavoured UNet.

    Encoder: ``num_res_blocks`` residual blocks per resolution with a strided-conv downsampling in
    between; middle: residual block, optional self-attention, residual block at the lowest
    resolution; decoder: ``num_res_blocks + 1`` residual blocks per resolution, each fed the
    concatenation of the running features and one encoder output (skip connection). The noise
    embedding (Fourier features of c_noise) plus the class embedding (linear map of the one-hot
    label) goes through a two-layer MLP and is added as a per-channel bias in every block.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        base, emb_dim, dropout = config.model_channels, config.emb_dim, config.dropout

        self.noise_embedding = NoiseEmbedding(base)
        self.noise_proj = nn.Linear(base, emb_dim)
        self.class_proj = (
            nn.Linear(config.num_classes, emb_dim, bias=False) if config.num_classes > 0 else None
        )
        self.emb_mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())

        self.conv_in = nn.Conv2d(config.img_channels, base, 3, padding=1)
        self.encoder = nn.ModuleList()
        skip_channels = [base]
        channels = base
        for level, mult in enumerate(config.channel_mult):
            if level > 0:
                self.encoder.append(Downsample(channels))
                skip_channels.append(channels)
            for _ in range(config.num_res_blocks):
                self.encoder.append(ResBlock(channels, base * mult, emb_dim, dropout))
                channels = base * mult
                skip_channels.append(channels)

        self.middle = nn.ModuleList([ResBlock(channels, channels, emb_dim, dropout)])
        if config.attention:
            self.middle.append(SelfAttention(channels))
        self.middle.append(ResBlock(channels, channels, emb_dim, dropout))

        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                in_channels = channels + skip_channels.pop()
                self.decoder.append(ResBlock(in_channels, base * mult, emb_dim, dropout))
                channels = base * mult
            if level > 0:
                self.decoder.append(Upsample(channels))

        self.norm_out = _normalization(channels)
        self.conv_out = _zero_init(nn.Conv2d(channels, config.img_channels, 3, padding=1))

    def embed(self, c_noise: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The per-sample conditioning vector from c_noise (B,) and class labels.

        Labels are integer class indices (B,) or (soft) one-hot rows (B, num_classes).
        """
        emb = self.noise_proj(self.noise_embedding(c_noise))
        if self.class_proj is None:
            if class_labels is not None:
                raise ValueError("this network is unconditional but class_labels were given")
            return self.emb_mlp(emb)
        if class_labels is None:
            raise ValueError(f"this network needs class_labels ({self.config.num_classes} classes)")
        if class_labels.is_floating_point():
            one_hot = class_labels.to(torch.float32)
        else:
            one_hot = F.one_hot(class_labels.long(), self.config.num_classes).to(torch.float32)
        return self.emb_mlp(emb + self.class_proj(one_hot.to(emb.device)))

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the middle block's output (the bottleneck feature's length)."""
        return self.config.model_channels * self.config.channel_mult[-1]

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
        bottleneck: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """F(x, c_noise, labels) for x of shape (B, C, H, W) and c_noise of shape (B,); with
        ``bottleneck``, also the middle block's output mean-pooled over space, (B, channels)."""
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        pooled = h.mean(dim=(2, 3)) if bottleneck else None
        for block in self.decoder:
            if isinstance(block, Upsample):
                h = block(h, skips[-1].shape[-2:])
            else:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, pooled) if bottleneck else out


class SmallEDMPrecond(nn.Module):
    """The small UNet behind EDM's preconditioning: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
    (EDM Eq. 7), scaled by :func:`~gasbench.teachers.preconditioning.edm_scalings` with
    sd = ``config.sigma_data``. (EDM's released networks are :mod:`gasbench.teachers.edm_networks`.)
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.sigma_data = config.sigma_data
        self.model = SmallUNet(config)

    def forward(
        self,
        x: torch.Tensor,
        sigma: Union[float, torch.Tensor],
        class_labels: Optional[torch.Tensor] = None,
        bottleneck: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """D(x, sigma, labels), an estimate of x_0, in ``x``'s dtype; with ``bottleneck``, also
        the UNet's spatially mean-pooled bottleneck (B, channels) of the same pass, in float32.

        ``sigma`` is a Python float, a 0-d tensor or a (B,) tensor. The network runs in float32;
        the preconditioning and the skip term use float64 when ``x`` is float64, so D -> x as
        sigma -> 0 holds to the caller's precision.
        """
        outer_dtype = torch.promote_types(x.dtype, torch.float32)
        sigma = torch.as_tensor(sigma, dtype=outer_dtype, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},): {sigma.shape}")
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma.reshape(-1, 1, 1, 1), self.sigma_data)
        x_outer = x.to(outer_dtype)
        net_out = self.model(
            (c_in * x_outer).to(torch.float32), c_noise.flatten().to(torch.float32), class_labels, bottleneck
        )
        net_out, features = net_out if bottleneck else (net_out, None)
        denoised = (c_skip * x_outer + c_out * net_out.to(outer_dtype)).to(x.dtype)
        return (denoised, features) if bottleneck else denoised


def count_parameters(net: nn.Module) -> int:
    """The number of scalar parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def save_network(
    net: SmallEDMPrecond, path: Union[str, Path], extra_metadata: Optional[dict[str, Any]] = None
) -> None:
    """Write ``net``'s weights and config to a safetensors file, atomically.

    The metadata fields (see :func:`read_network_metadata`) are the file format, the UNetConfig as
    JSON under ``unet_config`` and ``extra_metadata``, whose values are kept when they are strings
    and JSON-encoded otherwise. The output is byte-for-byte deterministic.
    """
    path = Path(path)
    fields = {
        FORMAT_METADATA_KEY: FILE_FORMAT,
        CONFIG_METADATA_KEY: json.dumps(net.config.to_dict()),
    }
    for key, value in (extra_metadata or {}).items():
        if key in fields:
            raise ValueError(f"metadata key {key!r} is reserved")
        fields[key] = value if isinstance(value, str) else json.dumps(value)
    metadata = {METADATA_KEY: json.dumps(fields, sort_keys=True)}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in net.state_dict().items()}
    write_atomic(path, save(tensors, metadata=metadata))


def read_network_metadata(path: Union[str, Path]) -> dict[str, str]:
    """The metadata fields (name -> string) of a file written by :func:`save_network`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    fields = json.loads(metadata.get(METADATA_KEY, "{}"))
    if fields.get(FORMAT_METADATA_KEY) != FILE_FORMAT:
        raise ValueError(f"{path} is not a {FILE_FORMAT} file (metadata keys: {sorted(metadata)})")
    return fields


def load_network(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> SmallEDMPrecond:
    """Rebuild the :class:`SmallEDMPrecond` saved by :func:`save_network`, in eval mode."""
    metadata = read_network_metadata(path)
    config = UNetConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    net = SmallEDMPrecond(config)
    net.load_state_dict(load_file(str(path), device=str(device)))
    return net.to(device).eval()
