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

The released ``.ckpt`` files are PyTorch-Lightning checkpoints, read without running anything and
renamed onto diffusers' modules by :mod:`gasbench.teachers.ldm_checkpoint`: the conversion runs once
per file and is cached as safetensors (:func:`gasbench.core.weights.converted_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.core.weights import WeightsSource, converted_weights, resolve_weights
from gasbench.teachers.base import ReferenceSolver, WeightsDeclaration
from gasbench.teachers.diffusers_teacher import DiffusersTeacher
from gasbench.teachers.ldm_checkpoint import convert_ldm_checkpoint
from gasbench.teachers.protocol import EvaluationProtocol


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
