"""Text-to-image diffusers pipelines as teachers: Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux.

One class, :class:`TextToImageTeacher`, for every pipeline; what differs between them is a small
:class:`PipelineFamily` that says how captions become the network's condition tensors (with the
pipeline's own ``encode_prompt``, so gasbench conditions the network exactly as diffusers does),
what the null condition of classifier-free guidance is, and how one network call is made:

* Stable Diffusion 1.x/2.x (Rombach et al., 2022): UNet on CLIP hidden states; null = the empty caption.
* SDXL (Podell et al., 2023): UNet on both CLIP encoders' penultimate states plus the added
  conditions (pooled text embedding and the six size/crop ids, Sec. 2.2: original size = target
  size = the sampled resolution, crop (0, 0)); null = zeros where the pipeline forces zeros for
  the empty prompt (``force_zeros_for_empty_prompt``), else the empty caption.
* SD3 (Esser et al., 2024): MMDiT on CLIP-L + CLIP-G + T5 states and the pooled CLIP embeddings,
  rectified flow with the scheduler's shift; null = the empty caption.
* Flux: MMDiT on 2x2-packed latents with CLIP pooled + T5 states and rotary position ids,
  rectified flow with the resolution-dependent (dynamic) shift resolved once per teacher; a
  guidance-distilled model takes its guidance scale as an input (one call per step, no CFG).

Conditions are prompt indices: sample seed s gets caption ``s mod P`` of the prompt file (by
default ``prompts/default_prompts.txt``); embeddings are computed once per caption and cached. CFG
is one batched call on the caption and the null condition, so one NFE is one network call.
Everything is solved in EDM sigma-space through :mod:`gasbench.teachers.time`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from gasbench.core.errors import GasbenchError
from gasbench.teachers.base import ReferenceSolver
from gasbench.teachers.diffusers_teacher import DiffusersTeacher, pipeline_default_guidance, weights_digest
from gasbench.teachers.protocol import EvaluationProtocol

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "default_prompts.txt"


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GasbenchError(f"prompt file {path} does not exist; give a text file with one caption per line.")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise GasbenchError(f"prompt file {path} has no captions (one per line).")
    return prompts


def import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise GasbenchError("text-to-image teachers and the CLIP score need `transformers`: "
                            "pip install 'gasbench[diffusers]' (or pip install transformers).") from exc
    return transformers


class PipelineFamily:
    """What differs between text-to-image pipelines (see the module docstring)."""

    pipelines: tuple[str, ...] = ()
    network_name = "unet"
    null_is_empty_caption = True  # else :meth:`null` builds it from a caption's tensors
    embedded_guidance = False  # guidance is a network input rather than CFG

    def encode(self, pipe, texts: list[str], device) -> dict[str, torch.Tensor]:
        """Per-caption condition tensors (batch first) from the pipeline's ``encode_prompt``."""
        raise NotImplementedError

    def null(self, pipe, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.zeros_like(v[:1]) for k, v in like.items()}

    def latent_shape(self, pipe, height: int, width: int) -> tuple[int, int, int]:
        f = pipe.vae_scale_factor
        return getattr(pipe, self.network_name).config.in_channels, height // f, width // f

    def image_seq_len(self, pipe, shape: tuple[int, int, int]) -> int:
        return shape[1] * shape[2]

    def setup(self, pipe, height: int, width: int, dtype) -> None:
        """Resolution-dependent inputs, computed once."""

    def call(self, network, x, timestep, tensors: dict[str, torch.Tensor], guidance: float) -> torch.Tensor:
        return network(x, timestep, encoder_hidden_states=tensors["prompt_embeds"], return_dict=False)[0]

    def describe(self, pipe) -> dict[str, Any]:
        return {}


class StableDiffusionFamily(PipelineFamily):
    pipelines = ("StableDiffusionPipeline",)

    def encode(self, pipe, texts, device):
        embeds, _ = pipe.encode_prompt(texts, device, 1, False)
        return {"prompt_embeds": embeds}


class SDXLFamily(PipelineFamily):
    pipelines = ("StableDiffusionXLPipeline",)

    def __init__(self, force_zeros: bool = True):
        self.null_is_empty_caption = not force_zeros

    def encode(self, pipe, texts, device):
        if pipe.text_encoder is None or pipe.text_encoder_2 is None:
            raise GasbenchError("an SDXL teacher needs both text encoders (the refiner pipeline has one).")
        embeds, _, pooled, _ = pipe.encode_prompt(texts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds, "text_embeds": pooled}

    def setup(self, pipe, height, width, dtype):
        size = (height, width)
        self.time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype,
                                               text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)

    def call(self, network, x, timestep, tensors, guidance):
        added = {"text_embeds": tensors["text_embeds"], "time_ids": self.time_ids.to(x.device, x.dtype).expand(len(x), -1)}
        return network(x, timestep, encoder_hidden_states=tensors["prompt_embeds"], added_cond_kwargs=added,
                       return_dict=False)[0]

    def describe(self, pipe):
        return {"time_ids": self.time_ids.flatten().tolist()}


class SD3Family(PipelineFamily):
    pipelines = ("StableDiffusion3Pipeline",)
    network_name = "transformer"

    def encode(self, pipe, texts, device):
        embeds, _, pooled, _ = pipe.encode_prompt(texts, texts, texts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds, "pooled": pooled}

    def image_seq_len(self, pipe, shape):
        patch = pipe.transformer.config.patch_size
        return (shape[1] // patch) * (shape[2] // patch)

    def call(self, network, x, timestep, tensors, guidance):
        return network(hidden_states=x, timestep=timestep, encoder_hidden_states=tensors["prompt_embeds"],
                       pooled_projections=tensors["pooled"], return_dict=False)[0]


class FluxFamily(PipelineFamily):
    """Latents are kept unpacked (C, h, w); each call packs them into 2x2 patches for the
    transformer and unpacks its velocity, with the pipeline's own helpers."""

    pipelines = ("FluxPipeline",)
    network_name = "transformer"

    def __init__(self, guidance_embeds: bool):
        self.embedded_guidance = guidance_embeds

    def encode(self, pipe, texts, device):
        embeds, pooled, text_ids = pipe.encode_prompt(texts, texts, device=device, num_images_per_prompt=1)
        self.text_ids = text_ids
        return {"prompt_embeds": embeds, "pooled": pooled}

    def latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor * 2
        return pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f)

    def image_seq_len(self, pipe, shape):
        return (shape[1] // 2) * (shape[2] // 2)

    def setup(self, pipe, height, width, dtype):
        self.pipe, self.size = pipe, (height, width)
        _, h, w = self.latent_shape(pipe, height, width)
        self.image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", dtype)

    def call(self, network, x, timestep, tensors, guidance):
        batch, channels, h, w = x.shape
        packed = self.pipe._pack_latents(x, batch, channels, h, w)
        scale = torch.full((batch,), guidance, device=x.device, dtype=torch.float32) if self.embedded_guidance else None
        # the pipeline feeds t in [0, 1], not t * num_train_timesteps
        velocity = network(hidden_states=packed, timestep=timestep / self.pipe.scheduler.config.num_train_timesteps, guidance=scale,
                           pooled_projections=tensors["pooled"], encoder_hidden_states=tensors["prompt_embeds"],
                           txt_ids=self.text_ids.to(x.device, x.dtype), img_ids=self.image_ids.to(x.device, x.dtype),
                           return_dict=False)[0]
        height, width = self.size
        return self.pipe._unpack_latents(velocity, height, width, self.pipe.vae_scale_factor)


def family_of(pipe) -> PipelineFamily:
    name = type(pipe).__name__
    if name in StableDiffusionFamily.pipelines:
        return StableDiffusionFamily()
    if name in SDXLFamily.pipelines:
        return SDXLFamily(bool(pipe.config.get("force_zeros_for_empty_prompt", True)))
    if name in SD3Family.pipelines:
        return SD3Family()
    if name in FluxFamily.pipelines:
        return FluxFamily(bool(pipe.transformer.config.guidance_embeds))
    raise GasbenchError(f"{name} is not a text-to-image pipeline gasbench conditions; supported: "
                        f"{', '.join(SUPPORTED_PIPELINES)}.")


SUPPORTED_PIPELINES = (StableDiffusionFamily.pipelines + SDXLFamily.pipelines + SD3Family.pipelines
                       + FluxFamily.pipelines)


class TextToImageTeacher(DiffusersTeacher):
    """A text-to-image pipeline's network, VAE and text encoders as an EDM-space teacher.

    Condition i is the index of a caption; index ``len(prompts)`` is the null condition of CFG.
    ``guidance`` is the CFG scale, or for a guidance-distilled Flux the scale fed to the network.
    ``size`` is the sampled resolution in pixels (height, width), default the pipeline's own.
    """

    # the MS-COCO protocol of the papers: 30,000 samples; FID needs the user's reference images
    # (--reference-images), so it is asked for by name
    protocol = EvaluationProtocol(metrics=("clip-score", "rmse", "psnr"), samples=30_000)
    modality = "text"

    def __init__(self, name: str, pipe, prompts: Sequence[str], *, guidance: Optional[float] = None,
                 size: Optional[tuple[int, int]] = None, reference: Optional[ReferenceSolver] = None,
                 weights_sha256: Optional[str] = None, spec: Optional[str] = None):
        self.pipe, self.family = pipe, family_of(pipe)
        network = getattr(pipe, self.family.network_name)
        if guidance is None:
            guidance = pipeline_default_guidance(type(pipe).__name__)
        elif type(pipe).__name__ == "FluxPipeline" and not self.family.embedded_guidance:
            raise GasbenchError(f"'{spec or name}' is a Flux model without a guidance embedding (as FLUX.1-schnell): "
                                f"it samples without guidance, so ?guidance= cannot apply.")
        self.embedded_guidance = float(guidance) if self.family.embedded_guidance else None
        cfg = 1.0 if type(pipe).__name__ == "FluxPipeline" else float(guidance)
        default = (getattr(pipe, "default_sample_size", None) or network.config.sample_size) * pipe.vae_scale_factor
        self.size = tuple(size) if size is not None else (default, default)
        shape = self.family.latent_shape(pipe, *self.size)
        if min(shape[1:]) < 1:
            raise GasbenchError(f"{self.size[0]}x{self.size[1]} pixels is smaller than one latent patch of '{spec or name}'.")
        self.family.setup(pipe, *self.size, network.dtype)
        self.prompts = list(prompts)
        self.prompts_sha256 = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        # what records say about the captions the CLIP score compared with
        self.prompts_source = f"{len(self.prompts)} captions, sha256 {self.prompts_sha256}"
        self._embeddings: dict[int, dict[str, torch.Tensor]] = {}
        super().__init__(name, network, dict(pipe.scheduler.config), shape, vae=pipe.vae,
                         null_condition=torch.tensor([len(self.prompts)]), guidance_scale=cfg, reference=reference,
                         weights_sha256=weights_sha256, spec=spec,
                         image_seq_len=self.family.image_seq_len(pipe, shape))

    def modules(self) -> list[torch.nn.Module]:
        encoders = [getattr(self.pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        return super().modules() + [e for e in encoders if e is not None]

    def conditions(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Prompt index ``seed mod len(prompts)`` per sample (the generator's seed), no randomness drawn."""
        return torch.tensor([g.initial_seed() % len(self.prompts) for g in generators])

    def prompts_for(self, cond: torch.Tensor) -> list[str]:
        """The captions of a batch of conditions (what the CLIP score compares images with)."""
        return [self.prompts[int(i)] for i in cond]

    @torch.no_grad()
    def _embed(self, indices: list[int]) -> None:
        null = len(self.prompts)
        captions = [i for i in indices if i != null or self.family.null_is_empty_caption]
        texts = [self.prompts[i] if i < null else "" for i in captions]
        with self.autocast():
            tensors = self.family.encode(self.pipe, texts or [self.prompts[0]], self.device)
        # kept on the CPU: a caption file of thousands of prompts would hold GiBs of device memory
        tensors = {k: v.float().cpu() for k, v in tensors.items()}
        for position, index in enumerate(captions):
            self._embeddings[index] = {k: v[position] for k, v in tensors.items()}
        if null in indices and not self.family.null_is_empty_caption:
            self._embeddings[null] = {k: v[0] for k, v in self.family.null(self.pipe, tensors).items()}

    def _network(self, x_in: torch.Tensor, timestep: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        if cond is None:
            raise GasbenchError(f"teacher '{self.name}' needs a prompt index per sample.")
        indices = [int(i) for i in cond]
        missing = sorted(set(indices) - set(self._embeddings))
        if missing:
            self._embed(missing)
        dtype = next(self.model.parameters()).dtype
        tensors = {k: torch.stack([self._embeddings[i][k] for i in indices]).to(self.device, dtype)
                   for k in self._embeddings[indices[0]]}
        return self.family.call(self.model, x_in, timestep, tensors, self.embedded_guidance)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pipeline": type(self.pipe).__name__, "size": list(self.size),
                "embedded_guidance": self.embedded_guidance, **self.family.describe(self.pipe),
                "prompts": {"count": len(self.prompts), "sha256": self.prompts_sha256,
                            "rule": "sample seed s uses prompt s mod count"}}

    @classmethod
    def from_folder(cls, folder: Path, *, spec: str, name: str, prompts: Optional[Sequence[str]] = None,
                    guidance: Optional[float] = None, size: Optional[tuple[int, int]] = None,
                    reference: Optional[ReferenceSolver] = None) -> "TextToImageTeacher":
        """A saved text-to-image pipeline folder (model_index.json), the default prompts unless given;
        ``guidance`` defaults to the pipeline class's own default (7.5 SD, 5.0 SDXL, 7.0 SD3, 3.5 Flux)."""
        return cls(name, load_pipeline(folder), read_prompts(DEFAULT_PROMPTS) if prompts is None else prompts,
                   guidance=guidance, size=size, reference=reference, spec=spec,
                   weights_sha256=weights_digest(component_folders(folder)))


def component_folders(folder: Path) -> list[Path]:
    index = json.loads((folder / "model_index.json").read_text())
    return [folder / name for name in sorted(index) if not name.startswith("_") and (folder / name).is_dir()]


@contextlib.contextmanager
def quiet_loading():
    """No per-component progress bars while a pipeline loads (gasbench shows its own progress)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def load_pipeline(folder: Path):
    """The diffusers pipeline saved in ``folder``, without the safety checker and image encoders
    (they play no part in sampling)."""
    import_transformers()
    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text())
    pipeline = index.get("_class_name")
    if pipeline not in SUPPORTED_PIPELINES:
        raise GasbenchError(f"{folder} holds a {pipeline}; gasbench's text-to-image teachers are "
                            f"{', '.join(SUPPORTED_PIPELINES)}.")
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
        if pipeline == "StableDiffusionPipeline" else {}
    optional = {k: None for k in ("image_encoder", "feature_extractor") if k in index}
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(folder, **{**optional, **extra})
    except (OSError, ValueError, TypeError) as exc:
        raise GasbenchError(f"diffusers could not load the {pipeline} in {folder}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe
