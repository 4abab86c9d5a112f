"""Stable Diffusion 1.5 (Rombach et al., 2022) as a teacher, and the CLIP score of its samples.

The teacher is the diffusers pipeline's UNet2DConditionModel on 4x64x64 latents (discrete VP,
scaled-linear betas, epsilon prediction), the CLIP ViT-L/14 text encoder and the KL VAE, with
classifier-free guidance 7.5 inside the denoiser (GAS Table 17), so one NFE is one batched UNet
call on the prompt and the empty prompt. Its condition is a prompt index
(a LongTensor): sample seed s gets prompt ``s mod P`` of a P-line prompt file, by default
``prompts/default_prompts.txt`` (64 everyday-scene captions written for gasbench in the style of
MS-COCO), otherwise the file named by the ``prompts`` argument or ``$GASBENCH_SD15_PROMPTS`` (one
caption per line, e.g. MS-COCO validation captions). Text embeddings are computed once per prompt
and cached.

Reference solver, GAS Table 17: iPNDM with 2 history terms ("iPNDM(2M)") on the GITS time steps.
The paper runs it at the student's NFE + 1; gasbench's reference is one fixed solve per seed, so
it uses NFE 8, the longest GITS list (GAS Appendix D.1), i.e. the paper's teacher for NFE-7
students and a more accurate one for NFE 4-6.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, WeightsDeclaration
from gasbench.teachers.diffusers_teacher import (
    DiffusersTeacher, pipeline_default_guidance, load_component, resolve_folder, weights_digest,
)
from gasbench.teachers.protocol import EvaluationProtocol

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "default_prompts.txt"
PROMPTS_ENV = "GASBENCH_SD15_PROMPTS"
SD15_HUB_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
SD15_REFERENCE = ReferenceSolver("ipndm", 8, "gits", {"order": 2})
CLIP_MODEL = "openai/clip-vit-large-patch14"
# OpenAI CLIP's input normalisation (Radford et al., 2021), shared by every released CLIP
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GasbenchError(f"prompt file {path} does not exist; give a text file with one caption per line.")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise GasbenchError(f"prompt file {path} has no captions (one per line).")
    return prompts


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise GasbenchError("text-to-image teachers and the CLIP score need `transformers`: "
                            "pip install 'gasbench[diffusers]' (or pip install transformers).") from exc
    return transformers


class TextToImageTeacher(DiffusersTeacher):
    """A Stable Diffusion-style pipeline (UNet2DConditionModel + CLIP text encoder + VAE).

    Condition i is the index of a prompt; index ``len(prompts)`` is the empty prompt, the null
    condition of classifier-free guidance as in the diffusers pipeline.
    """

    # the MS-COCO protocol of the papers: 30,000 samples; FID needs the user's reference images
    # (--reference-images), so it is asked for by name
    protocol = EvaluationProtocol(metrics=("clip-score", "rmse", "psnr"), samples=30_000)
    modality = "text"

    def __init__(self, name: str, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 tokenizer, scheduler_config: dict, prompts: Sequence[str], *, guidance_scale: float = 7.5,
                 reference: Optional[ReferenceSolver] = None, weights_sha256: Optional[str] = None,
                 spec: Optional[str] = None):
        if getattr(unet.config, "addition_embed_type", None) is not None:
            raise GasbenchError(f"the UNet of '{spec or name}' takes extra conditioning ({unet.config.addition_embed_type}, "
                                f"as SDXL does); only Stable Diffusion 1.x/2.x-style UNets are supported.")
        self.prompts = list(prompts)
        # what records say about the captions the CLIP score compared with
        self.prompts_source = (f"{len(self.prompts)} captions, sha256 "
                               f"{hashlib.sha256(chr(10).join(self.prompts).encode()).hexdigest()}")
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._embeddings: dict[int, torch.Tensor] = {}
        size = unet.config.sample_size
        super().__init__(name, unet, scheduler_config, (unet.config.in_channels, size, size), vae=vae,
                         condition_kwargs=self._text_kwargs, null_condition=torch.tensor([len(self.prompts)]),
                         guidance_scale=guidance_scale, reference=reference, weights_sha256=weights_sha256, spec=spec)

    def modules(self) -> list[torch.nn.Module]:
        return super().modules() + [self.text_encoder]

    def conditions(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Prompt index ``seed mod len(prompts)`` per sample (the generator's seed), no randomness drawn."""
        return torch.tensor([g.initial_seed() % len(self.prompts) for g in generators])

    def prompts_for(self, cond: torch.Tensor) -> list[str]:
        """The captions of a batch of conditions (what the CLIP score compares images with)."""
        return [self.prompts[int(i)] for i in cond]

    @torch.no_grad()
    def _embed(self, indices: list[int]) -> None:
        texts = [self.prompts[i] if i < len(self.prompts) else "" for i in indices]
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        with self.autocast():
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        # kept on the CPU: a caption file of thousands of prompts would hold GiBs of device memory
        self._embeddings.update(zip(indices, hidden.float().cpu()))

    def _text_kwargs(self, cond: Optional[torch.Tensor]) -> dict:
        if cond is None:
            raise GasbenchError(f"teacher '{self.name}' needs a prompt index per sample.")
        indices = [int(i) for i in cond]
        missing = sorted(set(indices) - set(self._embeddings))
        if missing:
            self._embed(missing)
        states = torch.stack([self._embeddings[i] for i in indices]).to(self.device)
        return {"encoder_hidden_states": states.to(next(self.model.parameters()).dtype)}

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        return {**super().describe(), "prompts": {"count": len(self.prompts), "sha256": digest,
                                                  "rule": "sample seed s uses prompt s mod count"}}

    @classmethod
    def from_folder(cls, folder: Path, *, spec: str, name: str, guidance: Optional[float] = None) -> "TextToImageTeacher":
        """A saved text-to-image pipeline folder with the default prompts; ``guidance`` defaults to
        the pipeline class's own default (7.5 for StableDiffusionPipeline)."""
        parts, pipeline = load_pipeline_parts(folder)
        guidance = pipeline_default_guidance(pipeline) if guidance is None else guidance
        return cls(name, **parts, prompts=read_prompts(DEFAULT_PROMPTS), guidance_scale=guidance, spec=spec)


def load_pipeline_parts(folder: Path) -> tuple[dict[str, Any], Optional[str]]:
    """The constructor arguments of :class:`TextToImageTeacher` from a saved pipeline folder
    (unet, vae, text_encoder, tokenizer, scheduler), and the pipeline's class name."""
    transformers = _import_transformers()
    index = json.loads((folder / "model_index.json").read_text())
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    missing = [c for c in components if c not in index]
    if missing:
        raise GasbenchError(f"{folder}/model_index.json lacks {', '.join(missing)}; a text-to-image teacher "
                            f"needs a Stable Diffusion-style pipeline.")
    text_classes = {c: getattr(transformers, index[c][1], None) for c in ("text_encoder", "tokenizer")}
    for component, found in text_classes.items():
        if found is None:
            raise GasbenchError(f"{folder}: transformers has no class '{index[component][1]}' for the {component}.")
    unet = load_component(folder / "unet")
    if type(unet).__name__ != "UNet2DConditionModel":
        raise GasbenchError(f"{folder}/unet holds a {type(unet).__name__}; text-to-image teachers need a UNet2DConditionModel.")
    parts = {
        "unet": unet,
        "vae": load_component(folder / "vae"),
        "text_encoder": text_classes["text_encoder"].from_pretrained(folder / "text_encoder"),
        "tokenizer": text_classes["tokenizer"].from_pretrained(folder / "tokenizer"),
        "scheduler_config": json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
        "weights_sha256": weights_digest([folder / c for c in components]),
    }
    return parts, index.get("_class_name")


@register_teacher("sd15", description="Stable Diffusion 1.5 (diffusers), text-to-image latents, CFG 7.5, prompts by seed")
class SD15Teacher(TextToImageTeacher):
    """Stable Diffusion 1.5 from the hub (``stable-diffusion-v1-5/stable-diffusion-v1-5``, downloaded
    by diffusers unless GASBENCH_OFFLINE=1) or a local pipeline folder given as ``weights``.

    ``prompts`` (or ``$GASBENCH_SD15_PROMPTS``) names a caption file; with one, the teacher is named
    ``sd15-prompts-<sha256[:8]>`` so its cached reference samples never mix with the default prompts'.
    """

    weights = WeightsDeclaration(hub_id=SD15_HUB_IDS[0])

    def __init__(self, weights: Optional[Path] = None, prompts: Optional[Path] = None):
        source = str(weights) if weights is not None else SD15_HUB_IDS[0]
        if not Path(source).expanduser().exists() and source not in SD15_HUB_IDS:
            raise GasbenchError(f"sd15 weights must be a local Stable Diffusion 1.5 pipeline folder or one of "
                                f"{', '.join(SD15_HUB_IDS)}; {source} is neither.")
        prompts = prompts if prompts is not None else os.environ.get(PROMPTS_ENV) or None
        captions = read_prompts(DEFAULT_PROMPTS if prompts is None else prompts)
        digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:8]
        parts, _ = load_pipeline_parts(resolve_folder(source))
        super().__init__("sd15" if prompts is None else f"sd15-prompts-{digest}", **parts, prompts=captions,
                         guidance_scale=7.5, reference=SD15_REFERENCE, spec=source)


@functools.lru_cache(maxsize=2)
def load_clip(model_id: str = CLIP_MODEL):
    """(CLIPModel, tokenizer) from a hub id (downloaded by transformers) or a saved local folder."""
    transformers = _import_transformers()
    offline = os.environ.get("GASBENCH_OFFLINE") == "1"
    try:
        model = transformers.CLIPModel.from_pretrained(model_id, local_files_only=offline).eval().requires_grad_(False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, local_files_only=offline)
    except OSError as exc:
        raise GasbenchError(f"could not load the CLIP model '{model_id}' ({exc}); the CLIP score needs it from the "
                            f"Hugging Face hub or a local folder saved with save_pretrained.") from exc
    return model, tokenizer


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: Sequence[str], model_id: str = CLIP_MODEL, *,
               device: "torch.device | str" = "cpu", batch_size: int = 64) -> float:
    """Mean CLIP score 100 * max(cos(E_image, E_text), 0) of images in [0, 1] (N, 3, H, W) and
    their prompts (Hessel et al., 2021, Eq. 1 with the weight 100 of the text-to-image
    literature instead of 2.5), with CLIP ViT-L/14 by default.

    Images are resized (bicubic, antialiased) so the short side is CLIP's input size, centre
    cropped and normalised as CLIP was trained; prompts are truncated to CLIP's 77 tokens.
    """
    if len(images) != len(prompts):
        raise GasbenchError(f"the CLIP score needs one prompt per image, got {len(images)} images and {len(prompts)} prompts.")
    model, tokenizer = load_clip(model_id)
    model = model.to(device)
    size = model.config.vision_config.image_size
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        h, w = batch.shape[-2:]
        scale = size / min(h, w)
        batch = torch.nn.functional.interpolate(batch, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                                mode="bicubic", antialias=True, align_corners=False)
        top, left = (batch.shape[-2] - size) // 2, (batch.shape[-1] - size) // 2
        pixels = (batch[..., top : top + size, left : left + size].clamp(0, 1) - mean) / std
        text = tokenizer(list(prompts[start : start + batch_size]), padding=True, truncation=True,
                         max_length=model.config.text_config.max_position_embeddings, return_tensors="pt").to(device)
        out = model(input_ids=text.input_ids, attention_mask=text.attention_mask,
                    pixel_values=pixels.to(next(model.parameters()).dtype))
        cosine = (out.image_embeds * out.text_embeds).sum(-1)
        scores.append(100 * cosine.clamp(min=0).double().cpu())
    return float(torch.cat(scores).mean())

