"""The latent teachers of GAS Table 17: CompVis latent diffusion (Rombach et al., 2022) in diffusers modules.

* ``lsun-bedroom``: LDM-4 on LSUN-Bedroom 256 (``configs/latent-diffusion/lsun_bedrooms-ldm-vq-4.yaml``),
  unconditional, 3x64x64 latents of the VQ-f4 autoencoder; teacher solver UniPC bh2 (order 3),
  time-uniform, NFE 20.
* ``imagenet256``: LDM-4-G on ImageNet 256 (``configs/latent-diffusion/cin256-v2.yaml``), a
  cross-attention UNet whose context is one token, the learned embedding of the class label
  (1001 rows, row 1000 the null class of classifier-free guidance); CFG scale 2.0, UniPC bh2
  (order 3), time-quadratic, NFE 10.
* ``imagenet256-dit``: DiT-XL/2 (Peebles & Xie, 2023) from the Hugging Face hub as a native
  diffusers alternative on the same protocol.

Both LDMs use the DDPM schedule of the latent-diffusion code, "linear" in sqrt(beta) (diffusers'
``scaled_linear``) from 0.0015 to 0.0195 over 1000 steps, epsilon prediction and latent scale 1.0
(neither config sets ``scale_factor``).

The released ``.ckpt`` files are PyTorch-Lightning checkpoints: torch zip archives whose pickle
holds the ``state_dict`` next to training-framework objects. :func:`read_lightning_checkpoint`
reads them without running anything, and :func:`ldm_to_diffusers` renames every entry onto
diffusers' UNet2DModel / UNet2DConditionModel / VQModel (or rejects it): the conversion runs once
per file and is cached as safetensors (:func:`gasbench.core.weights.converted_weights`).
"""

from __future__ import annotations

import contextlib
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

import torch

from gasbench.core import safe_pickle
from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, WeightsDeclaration
from gasbench.teachers.diffusers_teacher import DiffusersTeacher
from gasbench.teachers.protocol import EvaluationProtocol
from gasbench.core.weights import WeightsSource, converted_weights, gasbench_home, resolve_weights

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


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """One CompVis latent-diffusion model (its config yaml) in diffusers terms."""

    name: str
    source: WeightsSource
    unet: dict[str, Any]                # UNet2DModel, or UNet2DConditionModel if it has cross_attention_dim
    vae: dict[str, Any]                 # VQModel
    reference: ReferenceSolver
    legacy_attention: bool = True       # AttentionBlock (qkv conv) rather than SpatialTransformer
    num_classes: int = 0                # class embedding rows: num_classes + 1 (the last is the null class)
    guidance_scale: float = 1.0
    beta_start: float = 0.0015          # linear_start / linear_end / timesteps of the yaml
    beta_end: float = 0.0195
    timesteps: int = 1000
    scale_factor: float = 1.0
    description: str = field(default="", compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.unet["in_channels"], self.unet["sample_size"], self.unet["sample_size"])

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """ldm's "linear" schedule, linear in sqrt(beta): diffusers' scaled_linear."""
        return {"_class_name": "DDPMScheduler", "num_train_timesteps": self.timesteps, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}

    def alphas_cumprod(self) -> torch.Tensor:
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.timesteps, dtype=torch.float64) ** 2
        return torch.cumprod(1 - betas, 0)


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


def build_networks(config: LatentDiffusionConfig, tensors: dict[str, torch.Tensor], source: str
                   ) -> tuple[torch.nn.Module, torch.nn.Module, Optional[torch.nn.Embedding]]:
    """(UNet, VQModel, class embedding or None) holding ``tensors``, loaded strictly. The modules
    are built on the meta device and take the tensors as they are (no random initialisation)."""
    from diffusers import UNet2DConditionModel, UNet2DModel, VQModel

    unet_class = UNet2DConditionModel if config.unet.get("cross_attention_dim") else UNet2DModel
    with torch.device("meta"):
        networks = {"unet": unet_class(**config.unet), "vae": VQModel(**config.vae)}
        if config.num_classes:
            networks["class_embedding"] = torch.nn.Embedding(config.num_classes + 1, config.unet["cross_attention_dim"])
    for prefix, network in networks.items():
        part = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            network.load_state_dict(part, strict=True, assign=True)
        except RuntimeError as exc:
            raise GasbenchError(f"{source} does not fit the {config.name} {prefix} ({str(exc).splitlines()[0]} ...); "
                                f"it is a checkpoint of another model.") from None
    return networks["unet"], networks["vae"], networks.get("class_embedding")


class LatentDiffusionTeacher(DiffusersTeacher):
    """A CompVis latent-diffusion checkpoint as an EDM-space teacher (VP epsilon-prediction
    converted by :class:`~gasbench.teachers.diffusers_teacher.DiffusersTeacher`; samples decode
    through the VQ autoencoder, with its quantisation as LDM's ``decode_first_stage`` does)."""

    config: ClassVar[LatentDiffusionConfig]
    modality = "latent"
    CONVERSION = "ldm1"  # bump when ldm_to_diffusers changes what it writes: old caches are then unused

    def __init__(self, weights: Optional[Path] = None):
        config = self.config
        path, sha256 = resolve_weights(config.source, config.name, weights)
        tensors, metadata = converted_weights(path, sha256, f"{self.CONVERSION}-{config.name}",
                                              partial(convert_ldm_checkpoint, config=config))
        unet, vae, embedding = build_networks(config, tensors, str(path))
        conditional = embedding is not None
        self.class_embedding = embedding.eval().requires_grad_(False) if conditional else None
        super().__init__(config.name, unet, config.scheduler_config, config.shape, vae=vae,
                         latent_scale=metadata["scale_factor"], num_classes=config.num_classes,
                         condition_kwargs=self._class_context if conditional else None,
                         null_condition=torch.tensor([config.num_classes]) if conditional else None,
                         guidance_scale=config.guidance_scale, reference=config.reference, weights_sha256=sha256)

    def _class_context(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """LDM's ClassEmbedder: the cross-attention context is one token, the label's embedding."""
        return {"encoder_hidden_states": self.class_embedding(labels.long())[:, None]}

    def modules(self) -> list[torch.nn.Module]:
        return super().modules() + ([self.class_embedding] if self.class_embedding is not None else [])


VQ_F4 = {  # first_stage_config of both yamls: ch 128, ch_mult (1, 2, 4), 2 res blocks, z 3, n_embed 8192
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (128, 256, 512), "layers_per_block": 2,
    "latent_channels": 3, "num_vq_embeddings": 8192, "vq_embed_dim": 3, "norm_num_groups": 32,
    "sample_size": 256, "scaling_factor": 1.0,
}

# No published sha256 of either release file was found (the CompVis README and the scripts that
# download them give none): the file's own hash is recorded with every result.
LSUN_BEDROOM = LatentDiffusionConfig(
    name="lsun-bedroom",
    source=WeightsSource("the LDM-4 LSUN-Bedroom checkpoint (CompVis latent-diffusion; the zip holds model.ckpt)",
                         "lsun_bedrooms.zip", "https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip", None),
    unet={  # unet_config: model_channels 224, channel_mult (1, 2, 3, 4), attention at ds 2, 4, 8, 32 channels per head
        "sample_size": 64, "in_channels": 3, "out_channels": 3, "block_out_channels": (224, 448, 672, 896),
        "layers_per_block": 2, "down_block_types": ("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
        "up_block_types": ("AttnUpBlock2D",) * 3 + ("UpBlock2D",), "attention_head_dim": 32, "norm_num_groups": 32,
    },
    vae=VQ_F4,
    reference=ReferenceSolver("unipc-bh2", 20, "time-uniform", {"order": 3}),
    description="LDM-4 on LSUN-Bedroom 256 (CompVis checkpoint), 3x64x64 latents, VQ-f4 decoder; GAS Table 17",
)
IMAGENET256 = LatentDiffusionConfig(
    name="imagenet256",
    source=WeightsSource("the LDM-4-G class-conditional ImageNet checkpoint (CompVis latent-diffusion cin256-v2)",
                         "cin256-v2.ckpt", "https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt", None),
    unet={  # model_channels 192, channel_mult (1, 2, 3, 5), SpatialTransformer at ds 2, 4, 8, 1 head, context 512
        "sample_size": 64, "in_channels": 3, "out_channels": 3, "block_out_channels": (192, 384, 576, 960),
        "layers_per_block": 2, "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        "up_block_types": ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), "attention_head_dim": 1,
        "cross_attention_dim": 512, "norm_num_groups": 32,
    },
    vae=VQ_F4,
    reference=ReferenceSolver("unipc-bh2", 10, "time-quadratic", {"order": 3}),
    legacy_attention=False,
    num_classes=1000,
    guidance_scale=2.0,
    description="LDM-4-G on ImageNet 256 (CompVis cin256-v2), 1000 classes, CFG 2.0, VQ-f4 decoder; GAS Table 17",
)


@register_teacher(LSUN_BEDROOM.name, description=LSUN_BEDROOM.description)
class LSUNBedroomTeacher(LatentDiffusionTeacher):
    config = LSUN_BEDROOM
    weights = WeightsDeclaration(source=LSUN_BEDROOM.source)
    protocol = EvaluationProtocol(real_images="lsun-bedroom-256.zip")


@register_teacher(IMAGENET256.name, description=IMAGENET256.description)
class ImageNet256Teacher(LatentDiffusionTeacher):
    config = IMAGENET256
    weights = WeightsDeclaration(source=IMAGENET256.source)
    protocol = EvaluationProtocol(real_images="imagenet-256.zip")


def imagenet256_dit(weights: Optional[Path] = None) -> DiffusersTeacher:
    """DiT-XL/2 at 256 (Peebles & Xie, 2023) with ``imagenet256``'s guidance scale and reference
    solver, so the two networks are benchmarked the same way. ``weights`` is a local copy of the
    pipeline (``DiTPipeline.save_pretrained``); without it diffusers fetches the hub id."""
    teacher = DiffusersTeacher.from_pretrained(f"{weights or imagenet256_dit.weights.hub_id}?guidance={IMAGENET256.guidance_scale}")
    teacher.name, teacher.reference = "imagenet256-dit", IMAGENET256.reference
    return teacher


imagenet256_dit.weights = WeightsDeclaration(hub_id="facebook/DiT-XL-2-256")
register_teacher("imagenet256-dit", description="DiT-XL/2 256 (hub facebook/DiT-XL-2-256) on imagenet256's protocol: "
                                                "CFG 2.0, UniPC bh2")(imagenet256_dit)
