"""EDM's released pixel-space networks, as gasbench's own modules: CIFAR-10 32, FFHQ 64, AFHQv2 64.

The networks are those of Karras, Aittala, Aila, Laine, "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM, NeurIPS 2022): the DDPM++ / NCSN++ UNets of Song et al.,
"Score-Based Generative Modeling through Stochastic Differential Equations" (ICLR 2021), as EDM
reimplements them ("SongUNet"), behind the preconditionings of EDM Table 1 (VP, VE and EDM's
own, scaled by :mod:`gasbench.teachers.preconditioning`). The class names are those of EDM's
``training/networks.py``, as a release pickle records them; their parameter and buffer names are
the release's (``model.enc.32x32_conv.weight``, ``model.dec.32x32_aux_conv.weight``,
``...resample_filter``), so a release state dict loads with ``strict=True``
(:mod:`gasbench.teachers.edm_pickle` reads the pickles).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from gasbench.teachers.preconditioning import edm_scalings, ve_scalings, vp_scalings
from gasbench.teachers.time import VPLinearTime

# --- layers --------------------------------------------------------------------------------------


def _fan_in_normal(*shape: int) -> nn.Parameter:
    """Weights drawn with variance 1 / fan_in; released weights replace them when loaded."""
    return nn.Parameter(torch.randn(*shape) / math.sqrt(math.prod(shape[1:])))


class Linear(nn.Module):
    """y = x W^T + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _fan_in_normal(out_features, in_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """A square convolution with optional 2x up- or downsampling by a separable FIR filter.

    The filter is the outer product of ``resample_filter`` with itself, normalised to sum 1:
    [1, 1] (DDPM++) is box filtering, i.e. nearest upsampling and 2x2 average pooling; [1, 3, 3, 1]
    (NCSN++) is the binomial filter of StyleGAN2. Upsampling is a stride-2 transposed depthwise
    convolution with the filter scaled by 4, downsampling a stride-2 depthwise convolution.
    ``kernel=0`` resamples only. ``fused_resample`` (NCSN++'s residual encoder) convolves at the
    higher resolution, i.e. before filtering when downsampling and after it when upsampling, with
    the paddings merged; that gives a different function from the default order, so it is part of
    the network, not an optimisation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Union[list, tuple] = (1, 1), fused_resample: bool = False):
        super().__init__()
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = _fan_in_normal(out_channels, in_channels, kernel, kernel) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        kernel_2d = torch.outer(taps, taps)[None, None] / taps.sum().square()
        self.register_buffer("resample_filter", kernel_2d if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, f = self.weight, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if self.bias is None else x + self.bias.reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, channels / min_channels_per_group) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class UNetBlock(nn.Module):
    """The DDPM++ / NCSN++ residual block, optionally resampling and followed by self-attention.

    h = conv1(dropout(silu(norm1(conv0(silu(norm0(x))) + A emb)))), out = (h + skip(x)) * skip_scale,
    where ``skip`` is a 1x1 convolution (resampling like conv0) whenever the shape changes. The
    attention is single-head over all pixels, q, k, v from one 1x1 convolution of norm2(out),
    added residually and rescaled by ``skip_scale`` again.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Union[list, tuple] = (1, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 1 if attention else 0
        self.dropout, self.skip_scale = dropout, skip_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
        if attention:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if not self.num_heads:
            return h
        batch, channels, height, width = h.shape
        # channels of the qkv output are interleaved as (channel, {q, k, v})
        q, k, v = self.qkv(self.norm2(h)).reshape(batch, channels, 3, height * width).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (self.proj(attended.transpose(1, 2).reshape(h.shape)) + h) * self.skip_scale


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of the noise label (DDPM++): [cos(x w_i), sin(x w_i)] with
    w_i = (1 / max_positions)^(i / (n - endpoint)), i < n = num_channels / 2."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        phases = torch.outer(x, ((1 / self.max_positions) ** exponents).to(x.dtype))
        return torch.cat([phases.cos(), phases.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (NCSN++): [cos(2 pi x f_i), sin(2 pi x f_i)],
    with frequencies f_i ~ N(0, scale^2) stored in the buffer ``freqs``."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([phases.cos(), phases.sin()], dim=1)


class SongUNet(nn.Module):
    """The DDPM++ (defaults) and NCSN++ UNets of Song et al. (2021) as configured in EDM.

    Mapping: noise embedding (positional or Fourier, its cos/sin halves swapped) plus the scaled
    class label and augmentation labels, then two SiLU-activated linear layers. Encoder, per
    resolution ``img_resolution >> level``: an input convolution (level 0) or a downsampling block,
    then ``num_blocks`` blocks, with attention at ``attn_resolutions``; the "residual" encoder
    (NCSN++) adds a downsampled projection of the input pyramid after each downsampling. Decoder:
    two blocks at the lowest resolution (the first with attention), then per resolution an
    upsampling block and ``num_blocks + 1`` blocks that each take one encoder output as a skip
    connection; the output is GroupNorm-SiLU-conv of the last features ("standard"), or the sum
    of such heads at every resolution, upsampled ("skip", NCSN++'s output pyramid).

    ``label_dropout`` is a training option; it is accepted so recorded arguments construct the net.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Union[list, tuple] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Union[list, tuple] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Union[list, tuple] = (1, 1)):
        super().__init__()
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type {embedding_type!r} is not 'positional' or 'fourier'")
        if encoder_type not in ("standard", "residual"):
            raise ValueError(f"encoder_type {encoder_type!r} is not supported (standard, residual)")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type {decoder_type!r} is not 'standard' or 'skip'")
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        self.bottleneck_channels = model_channels * channel_mult[-1]
        block = dict(emb_channels=emb_channels, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter)

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        channels = aux_channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels, 3)
                channels = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(aux_channels, channels, 3, down=True,
                                                                   resample_filter=resample_filter, fused_resample=True)
                    aux_channels = channels
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(channels, model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        skips = [layer.out_channels for name, layer in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels + skips.pop(), model_channels * mult,
                    attention=idx == num_blocks and res in attn_resolutions, **block)
                channels = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(channels, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(channels, out_channels, 3)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor],
                augment_labels: Optional[torch.Tensor] = None, bottleneck: bool = False
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """F(x, c_noise) for x (B, C, H, W) and noise labels (B,); with ``bottleneck``, also the
        features entering the first skip-connected decoder block, mean-pooled over space (B, C')."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # (cos, sin) -> (sin, cos)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, layer in self.enc.items():
            if name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        out, head, features = None, None, None
        for name, layer in self.dec.items():
            if name.endswith("_aux_up"):
                out = layer(out)
            elif name.endswith("_aux_norm"):
                head = layer(x)
            elif name.endswith("_aux_conv"):
                head = layer(F.silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != layer.in_channels:
                    if features is None:
                        features = x.float().mean(dim=(2, 3))
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return (out, features) if bottleneck else out


# --- preconditionings (EDM Table 1) --------------------------------------------------------------


class _Precond(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM Eq. 7) in float32, as EDM computes it;
    subclasses give the scalings of their row of EDM Table 1."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, model_type: str = "SongUNet",
                 **model_kwargs):
        super().__init__()
        if model_type != "SongUNet":
            raise ValueError(f"model_type {model_type!r} is not supported (gasbench implements EDM's SongUNet)")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                              label_dim=label_dim, **model_kwargs)

    def scalings(self, sigma: torch.Tensor) -> tuple[Any, Any, Any, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for sigma of shape (B, 1, 1, 1)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                bottleneck: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """D(x, sigma) for x (B, C, H, W) and sigma (B,) or scalar, float32; with ``bottleneck``, also
        the UNet's pooled bottleneck features of the same pass."""
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros(1, self.label_dim, device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        else:
            class_labels = None
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        result = self.model(c_in * x, c_noise.flatten(), class_labels, bottleneck=bottleneck)
        net_out, features = result if bottleneck else (result, None)
        denoised = c_skip * x + c_out * net_out.to(torch.float32)
        return (denoised, features) if bottleneck else denoised


class EDMPrecond(_Precond):
    """EDM's preconditioning, :func:`~gasbench.teachers.preconditioning.edm_scalings` with ``sigma_data``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, sigma_data: float = 0.5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, model_type, **model_kwargs)
        self.sigma_data = sigma_data

    def scalings(self, sigma):
        return edm_scalings(sigma, self.sigma_data)


class VPPrecond(_Precond):
    """The VP preconditioning of Song et al. (2021), :func:`~gasbench.teachers.preconditioning.vp_scalings`
    in the VP-linear time with this network's ``beta_min``, ``beta_d``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, beta_d: float = 19.9,
                 beta_min: float = 0.1, M: int = 1000, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    def scalings(self, sigma):
        return vp_scalings(sigma, VPLinearTime(self.beta_min, self.beta_d), self.M)


class VEPrecond(_Precond):
    """The VE preconditioning of Song et al. (2021), :func:`~gasbench.teachers.preconditioning.ve_scalings`."""

    def scalings(self, sigma):
        return ve_scalings(sigma)


PRECONDS = {cls.__name__: cls for cls in (EDMPrecond, VPPrecond, VEPrecond)}
# the persistent classes a release network is made of, by the names the pickle records
NETWORK_CLASSES = {cls.__name__: cls for cls in (*PRECONDS.values(), SongUNet, UNetBlock, Conv2d, Linear,
                                                 GroupNorm, PositionalEmbedding, FourierEmbedding)}
