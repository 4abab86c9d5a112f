"""Reading a CompVis latent-diffusion checkpoint without running it, and renaming it onto diffusers.

The released ``.ckpt`` files are PyTorch-Lightning checkpoints: torch zip archives whose pickle
holds the ``state_dict`` next to training-framework objects. :func:`read_lightning_checkpoint`
reads them without running anything, and :func:`ldm_to_diffusers` renames every entry onto
diffusers' UNet2DModel / UNet2DConditionModel / VQModel (or rejects it). The teachers that use
them: :mod:`gasbench.teachers.ldm`.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from gasbench.core import safe_pickle
from gasbench.core.errors import GasbenchError
from gasbench.core.weights import gasbench_home

if TYPE_CHECKING:
    from gasbench.teachers.ldm import LatentDiffusionConfig

# ---------------------------------------------------------------------------------------------
# Reading a Lightning checkpoint without running it


def read_lightning_checkpoint(path: Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, read with ``weights_only=True`` or, when that
    refuses a non-tensor global (Lightning's ``ModelCheckpoint``), by gasbench's restricted
    unpickler with the ``lightning-checkpoint`` allow-list (:data:`gasbench.core.safe_pickle.FORMATS`)."""
    unreadable = f"{path} is not a readable torch checkpoint"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a global outside torch's allow-list: read again the restricted way
    except Exception as exc:
        raise GasbenchError(f"{unreadable} ({type(exc).__name__}: {str(exc).split('. ')[0]}).") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=safe_pickle.pickle_module("lightning-checkpoint", str(path)))
    except GasbenchError:
        raise
    except Exception as exc:
        raise GasbenchError(f"{unreadable} ({type(exc).__name__}: {str(exc).split('. ')[0]}).") from None


@contextlib.contextmanager
def _checkpoint_file(path: Path) -> Iterator[Path]:
    """``path`` itself, or the one ``.ckpt`` inside it when it is a release zip (``lsun_bedrooms.zip``),
    extracted to a temporary file. A torch checkpoint is a zip too, but holds no ``.ckpt`` member."""
    members = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".ckpt")]
            if len(members) > 1:
                raise GasbenchError(f"{path} holds several checkpoints ({', '.join(members)}); pass the one "
                                    f"to use with --weights.")
            if members:
                gasbench_home().mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=gasbench_home()) as scratch:
                    yield Path(archive.extract(members[0], scratch))
    if not members:
        yield path


# ---------------------------------------------------------------------------------------------
# LDM key names -> diffusers key names

UNET_PREFIX, VAE_PREFIX, EMA_PREFIX = "model.diffusion_model.", "first_stage_model.", "model_ema."
CLASS_EMBEDDING = "cond_stage_model.embedding.weight"
# DDPM buffers derived from the betas (ldm.models.diffusion.ddpm.DDPM.register_schedule), a learned
# log-variance that sampling never reads, and the EMA's bookkeeping
IGNORED = frozenset({
    "betas", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar", "model_ema.decay", "model_ema.num_updates",
})

_UNET_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
# openaimodel ResBlock: in_layers = (norm, SiLU, conv), emb_layers = (SiLU, linear),
# out_layers = (norm, SiLU, dropout, conv)
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_LEGACY_ATTENTION = {"norm": "group_norm", "qkv": "qkv", "proj_out": "to_out.0"}  # qkv: split later
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LINEAR = re.compile(r".*\.(to_q|to_k|to_v|to_out\.0)\.weight")


def _unet_module(module: str, layers: int, legacy_attention: bool) -> Optional[str]:
    """The diffusers path of an openaimodel UNet module (``input_blocks.4.1.proj_out``), or None.

    input_blocks = [conv_in, then per level ``layers`` x (ResBlock[, attention]) and a
    Downsample (``op``) except after the last level]; middle_block = (ResBlock, attention,
    ResBlock); output_blocks = per level, deepest first, ``layers + 1`` x (ResBlock[, attention]
    [, Upsample (``conv``) closing every level but the first]).
    """
    if module in _UNET_TOP:
        return _UNET_TOP[module]
    parts = module.split(".")
    try:
        if parts[0] == "middle_block":
            block = ("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1")[int(parts[1])]
            is_resnet, inner = parts[1] != "1", parts[2:]
        elif parts[0] in ("input_blocks", "output_blocks"):
            index, child, inner = int(parts[1]), int(parts[2]), parts[3:]
            if parts[0] == "input_blocks":
                level, layer = divmod(index - 1, layers + 1)
                if layer == layers:  # the level's Downsample
                    return f"down_blocks.{level}.downsamplers.0.conv" if inner == ["op"] and child == 0 else None
                side = "down_blocks"
            else:
                level, layer = divmod(index, layers + 1)
                if inner == ["conv"] and child > 0:  # the level's Upsample
                    return f"up_blocks.{level}.upsamplers.0.conv"
                side = "up_blocks"
            is_resnet = child == 0
            block = f"{side}.{level}.{'resnets' if is_resnet else 'attentions'}.{layer}"
        else:
            return None
    except (ValueError, IndexError):
        return None
    inner_path = ".".join(inner)
    if is_resnet:
        renamed = _UNET_RESNET.get(inner_path)
    elif legacy_attention:
        renamed = _LEGACY_ATTENTION.get(inner_path)
    else:  # SpatialTransformer: diffusers' Transformer2DModel uses the same names
        renamed = inner_path or None
    return f"{block}.{renamed}" if renamed else None


def _vae_module(module: str, levels: int) -> Optional[str]:
    """The diffusers VQModel path of an LDM VQModel module (``decoder.up.0.block.2.conv1``), or None.

    The LDM Decoder indexes ``up`` by resolution level (0 = full resolution, run last); diffusers'
    ``up_blocks`` are in execution order, so up.i is up_blocks[levels - 1 - i].
    """
    if module in ("quant_conv", "post_quant_conv", "quantize.embedding"):
        return module
    coder, *parts = module.split(".")
    if coder not in ("encoder", "decoder") or not parts:
        return None
    if parts in (["conv_in"], ["conv_out"]):
        return f"{coder}.{parts[0]}"
    if parts == ["norm_out"]:
        return f"{coder}.conv_norm_out"
    try:
        if parts[0] == "mid" and len(parts) == 3:
            if parts[1] == "attn_1" and parts[2] in _VAE_ATTENTION:
                return f"{coder}.mid_block.attentions.0.{_VAE_ATTENTION[parts[2]]}"
            resnet = {"block_1": "0", "block_2": "1"}[parts[1]]
            return f"{coder}.mid_block.resnets.{resnet}.{_VAE_RESNET[parts[2]]}"
        stage = {"encoder": "down", "decoder": "up"}[coder]
        if parts[0] != stage:
            return None
        level = int(parts[1])
        block = f"{coder}.{stage}_blocks.{level if coder == 'encoder' else levels - 1 - level}"
        if parts[2:] == [f"{stage}sample", "conv"]:
            return f"{block}.{stage}samplers.0.conv"
        if parts[2] == "block" and len(parts) == 5:
            return f"{block}.resnets.{int(parts[3])}.{_VAE_RESNET[parts[4]]}"
    except (ValueError, IndexError, KeyError):
        return None
    return None


def _split_legacy_qkv(path: str, param: str, value: torch.Tensor, head_channels: int) -> dict[str, torch.Tensor]:
    """openaimodel's QKVAttentionLegacy reads the qkv conv's 3C outputs head by head,
    [q_1, k_1, v_1, q_2, ...] with ``head_channels`` each; diffusers has one projection per q, k, v
    with the heads contiguous. Its 1/sqrt(sqrt(ch)) scaling of q and k is diffusers' 1/sqrt(ch)."""
    channels = value.shape[0] // 3
    per_head = value.reshape(channels // head_channels, 3, head_channels, *value.shape[1:])
    base = path.removesuffix(".qkv")
    return {f"{base}.to_{name}.{param}": per_head[:, i].reshape(channels, *value.shape[1:])
            for i, name in enumerate("qkv")}


def _ema_weights(unet: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The EMA copy of every UNet parameter. LitEma (ldm/modules/ema.py) stores the parameter
    ``diffusion_model.<path>`` of the DiffusionWrapper as the buffer ``<path without dots>``; the
    official sampler runs inside ``ema_scope``, i.e. on these weights."""
    names = {EMA_PREFIX + ("diffusion_model." + key).replace(".", ""): key for key in unet}
    missing = sorted(set(names) - set(ema))
    extra = sorted(set(ema) - set(names) - IGNORED)
    if missing or extra or len(names) != len(unet):
        raise GasbenchError(f"{source}: the EMA weights (model_ema.*) do not match the UNet "
                            f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}).")
    return {key: ema[name] for name, key in names.items()}


def ldm_to_diffusers(state: dict[str, Any], config: LatentDiffusionConfig, source: str = "the checkpoint"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of an LDM checkpoint as ``unet.*``, ``vae.*`` and ``class_embedding.weight``
    diffusers tensors (float32), plus metadata. Every entry is converted, or ignored because it is
    listed in :data:`IGNORED` (or is a raw UNet weight superseded by its EMA copy); anything else
    stops the conversion, naming it."""
    state = dict(state)
    ema = {k: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
    unet = {k[len(UNET_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(UNET_PREFIX)]}
    if ema:
        unet = _ema_weights(unet, ema, source)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in unet.items():
        module, _, param = key.rpartition(".")
        path = _unet_module(module, config.unet["layers_per_block"], config.legacy_attention)
        if path is None:
            unknown.append(UNET_PREFIX + key)
        elif path.endswith(".qkv"):
            out.update({f"unet.{k}": v for k, v in
                        _split_legacy_qkv(path, param, value, config.unet["attention_head_dim"]).items()})
        else:
            out[f"unet.{path}.{param}"] = value
    levels = len(config.vae["block_out_channels"])
    for key in [k for k in state if k.startswith(VAE_PREFIX)]:
        module, _, param = key[len(VAE_PREFIX):].rpartition(".")
        path = _vae_module(module, levels)
        if path is None:
            unknown.append(key)
        else:
            out[f"vae.{path}.{param}"] = state.pop(key)
    if config.num_classes and CLASS_EMBEDDING in state:
        out["class_embedding.weight"] = state.pop(CLASS_EMBEDDING)
    if "alphas_cumprod" in state:
        trained = state.pop("alphas_cumprod").to(torch.float64)
        if trained.shape != (config.timesteps,) or not torch.allclose(trained, config.alphas_cumprod(), atol=1e-6):
            raise GasbenchError(f"{source} was trained with another noise schedule than {config.name}'s (scaled-"
                                f"linear betas {config.beta_start} -> {config.beta_end}, {config.timesteps} steps).")
    scale_factor = float(state.pop("scale_factor")) if "scale_factor" in state else config.scale_factor
    unknown += sorted(k for k in state if k not in IGNORED)
    if unknown:
        raise GasbenchError(f"{source} is not the {config.name} checkpoint: {len(unknown)} entries have no place in "
                            f"its networks (e.g. {', '.join(unknown[:3])}).")
    ignored = sorted(set(state) | (set(ema) & IGNORED)) + ([f"{UNET_PREFIX}* (superseded by the EMA)"] if ema else [])
    tensors = {k: (_linear_weight(k, v).float() if v.is_floating_point() else v) for k, v in out.items()}
    return tensors, {"scale_factor": scale_factor, "weights": "ema" if ema else "model", "ignored": ignored}


def _linear_weight(key: str, value: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution kernel (legacy and VQ attention projections) as the linear weight diffusers has."""
    return value.flatten(1) if _LINEAR.fullmatch(key) and value.dim() > 2 else value


def convert_ldm_checkpoint(path: Path, config: LatentDiffusionConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the checkpoint at ``path`` (a ``.ckpt`` or the release zip holding one) and convert it."""
    with _checkpoint_file(Path(path)) as checkpoint_path:
        checkpoint = read_lightning_checkpoint(checkpoint_path)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GasbenchError(f"{path} is not a latent-diffusion checkpoint: it has no 'state_dict' of tensors.")
    tensors, metadata = ldm_to_diffusers(state, config, str(path))
    step = checkpoint.get("global_step")
    return tensors, {**metadata, "global_step": step if isinstance(step, int) else None}
