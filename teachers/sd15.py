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
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, WeightsDeclaration
from gasbench.teachers.diffusers_teacher import resolve_folder, weights_digest
from gasbench.teachers.text_to_image import (
    DEFAULT_PROMPTS,
    TextToImageTeacher,
    component_folders,
    import_transformers,
    load_pipeline,
    read_prompts,
)

PROMPTS_ENV = "GASBENCH_SD15_PROMPTS"
SD15_HUB_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
SD15_REFERENCE = ReferenceSolver("ipndm", 8, "gits", {"order": 2})
CLIP_MODEL = "openai/clip-vit-large-patch14"
# OpenAI CLIP's input normalisation (Radford et al., 2021), shared by every released CLIP
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
        folder = resolve_folder(source)
        pipe = load_pipeline(folder)
        if type(pipe).__name__ != "StableDiffusionPipeline":
            raise GasbenchError(f"{source} holds a {type(pipe).__name__}, not Stable Diffusion 1.5.")
        super().__init__("sd15" if prompts is None else f"sd15-prompts-{digest}", pipe, captions, guidance=7.5,
                         reference=SD15_REFERENCE, spec=source, weights_sha256=weights_digest(component_folders(folder)))


@functools.lru_cache(maxsize=2)
def load_clip(model_id: str = CLIP_MODEL):
    """(CLIPModel, tokenizer) from a hub id (downloaded by transformers) or a saved local folder."""
    transformers = import_transformers()
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

