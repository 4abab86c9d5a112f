"""Any diffusers model as a gasbench teacher (``gasbench run --dataset diffusers:<hub id or folder>``).

A diffusers pipeline is a network, a scheduler config that says how the network was trained, and
optionally a VAE. gasbench solves in EDM sigma-space (x = x_0 + sigma * eps, Karras et al., 2022),
so each kind of training schedule is converted to that space by a small
:class:`~gasbench.teachers.time.NoiseSchedule`:

* discrete VP (DDPM/DDIM/PNDM/DPM-Solver/Euler configs; Ho et al., 2020): x_vp = x / sqrt(1 + sigma^2)
  with sigma_k = sqrt((1 - alphabar_k) / alphabar_k); a continuous sigma is fed as the fractional
  timestep found by interpolating log-sigma between the discrete ones;
* EDM (EDMEuler / EDMDPMSolverMultistep configs): the preconditioning of Karras et al. (2022),
  Table 1, with c_noise = log(sigma) / 4 and diffusers' sign for v-prediction;
* flow matching / rectified flow (FlowMatchEulerDiscrete; Lipman et al., 2023; Liu et al., 2023):
  x_t = (1 - t) x_0 + t eps, v = eps - x_0, so sigma = t / (1 - t) and x_t = (1 - t) x.

Supported networks: UNet2DModel (unconditional or class labels), DiT (DiTTransformer2DModel, class
labels, learned-sigma outputs truncated to the sample channels) and, with their text front ends
(:mod:`gasbench.teachers.text_to_image`), the Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux
pipelines. Classifier-free guidance (Ho & Salimans,
2022) is applied inside :meth:`DiffusersTeacher.denoise` from one batched call on the condition
and the null condition, so one NFE is one (doubled) network call.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.weights import sha256_of
from gasbench.teachers.base import ReferenceSolver, Teacher
from gasbench.teachers.time import schedule_from_config

# UniPC-3 on logSNR, GAS Table 17's pixel-space teacher solver, at NFE 50 as the built-in
# teachers use (20 in the paper): a diffusers model of unknown smoothness gets the margin.
DEFAULT_REFERENCE = ReferenceSolver("unipc", 50, "logsnr", {"order": 3})

SUPPORTED_MODELS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")


def _default_condition_kwargs(cond: Optional[torch.Tensor]) -> dict:
    return {} if cond is None else {"class_labels": cond}


class DiffusersTeacher(Teacher):
    """A diffusers network + noise schedule (+ VAE) as an EDM-space teacher.

    ``model(x, timestep, **condition_kwargs(cond))`` is called once per evaluation (on the batch of
    conditions and null conditions when ``guidance_scale != 1``, D = D_null + w (D_cond - D_null),
    Ho & Salimans (2022), Eq. 6, which equals guidance on eps or v since D is affine in them);
    learned-sigma outputs (2C channels) keep their first C. ``vae`` decodes latents / ``latent_scale``
    (default: its config's scaling_factor, plus its shift_factor when it has one).
    """

    def __init__(self, name: str, model: torch.nn.Module, scheduler_config: dict, sample_shape: tuple[int, ...], *,
                 vae: Optional[torch.nn.Module] = None,
                 latent_scale: Optional[float] = None,
                 num_classes: int = 0,
                 condition_kwargs: Optional[Callable[[Optional[torch.Tensor]], dict]] = None,
                 null_condition: Optional[torch.Tensor] = None,
                 guidance_scale: float = 1.0,
                 reference: Optional[ReferenceSolver] = None,
                 weights_sha256: Optional[str] = None,
                 spec: Optional[str] = None,
                 decode_batch: int = 16,
                 image_seq_len: Optional[int] = None):
        if guidance_scale != 1.0 and null_condition is None:
            raise GasbenchError(f"teacher '{name}': guidance scale {guidance_scale} needs a null condition "
                                f"(this model has no unconditional input).")
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.schedule = schedule_from_config(scheduler_config, image_seq_len)
        self.time = self.schedule
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max
        self.sigma_data = self.schedule.sigma_data
        self.shape = tuple(sample_shape)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        if vae is not None and self.modality == "pixel":
            self.modality = "latent"
        vae_config = vae.config if vae is not None else {}
        self.latent_scale = float((vae_config.get("scaling_factor") if latent_scale is None else latent_scale) or 1.0)
        self.latent_shift = float(vae_config.get("shift_factor") or 0.0)
        self.num_classes = num_classes
        self.condition_kwargs = condition_kwargs or _default_condition_kwargs
        self.null_condition = null_condition
        self.guidance_scale = float(guidance_scale)
        self.reference = reference or DEFAULT_REFERENCE
        self.weights_sha256 = weights_sha256
        self.spec = spec
        self.decode_batch = decode_batch
        self.feature_module, self.feature_dim = _feature_module(model)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.vae] if self.vae is not None else [])

    def _evaluate(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        x64 = x.to(torch.float64)
        x_in, timestep = self.schedule.model_input(x64, sigma)
        guided = self.guidance_scale != 1.0
        if cond is not None:
            cond = cond.to(self.device)
        if guided:
            if cond is None:
                raise GasbenchError(f"teacher '{self.name}' guides its samples and needs a condition per sample.")
            null = self.null_condition.to(self.device).expand(x.shape[0], *self.null_condition.shape[1:])
            cond = torch.cat([cond, null])
            x_in, timestep = torch.cat([x_in, x_in]), torch.cat([timestep, timestep])
        dtype = next(self.model.parameters()).dtype
        with self.autocast():
            output = self._network(x_in.to(self.device, dtype), timestep.to(self.device, torch.float32), cond)
        output = output[:, : self.shape[0]].to(torch.float64)
        if guided:
            conditional, unconditional = output.chunk(2)
            output = unconditional + self.guidance_scale * (conditional - unconditional)
        return self.schedule.to_denoised(output.to(x.device), x64, sigma).to(x.dtype)

    def _network(self, x_in: torch.Tensor, timestep: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """One network call on the schedule's input and timestep; the output in the sample's layout."""
        return self.model(x_in, timestep, **self.condition_kwargs(cond), return_dict=False)[0]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        return self._evaluate(x, sigma, cond)

    def denoise_with_features(self, x, sigma, cond):
        """D and the network's bottleneck from the same call: the UNet's middle-block output
        mean-pooled over space, or a DiT's last block's tokens averaged (conditional half under CFG)."""
        captured = []

        def hook(module, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            captured.append(output.float().mean(dim=(2, 3)) if output.dim() == 4 else output.float().mean(dim=1))

        handle = self.feature_module.register_forward_hook(hook)
        try:
            denoised = self._evaluate(x, sigma, cond)
        finally:
            handle.remove()
        return denoised, captured[0][: x.shape[0]].to(x.device, torch.float64)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1]: the VAE's decoding of x / latent_scale + shift, or x itself in [-1, 1]."""
        if self.vae is None:
            return super().decode(x)
        dtype = next(self.vae.parameters()).dtype
        out = []
        for chunk in x.split(self.decode_batch):
            z = (chunk.to(self.device, torch.float64) / self.latent_scale + self.latent_shift).to(dtype)
            with self.autocast():
                out.append(self.vae.decode(z, return_dict=False)[0].float().cpu())
        return super().decode(torch.cat(out))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "spec": self.spec, "model": type(self.model).__name__,
                "schedule": self.schedule.describe(), "guidance_scale": self.guidance_scale,
                "latent_scale": self.latent_scale if self.vae is not None else None}

    @classmethod
    def from_pretrained(cls, spec: str) -> "Teacher":
        """The teacher of ``spec``: a local pipeline folder (model_index.json), a single model folder
        (config.json with scheduler_config.json beside it or in ../scheduler), or a hub id that
        diffusers downloads (unless GASBENCH_OFFLINE=1); ``?guidance=W`` sets the CFG scale of a
        conditional model (default: the pipeline's own default, e.g. 4.0 for DiT; for a
        guidance-distilled Flux the scale it takes as input); ``?size=HxW`` (or ``?size=N``) the
        resolution in pixels of a text-to-image pipeline (default: its own)."""
        spec, options = _parse_spec(spec)
        folder = resolve_folder(spec)
        if (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text())
            if "text_encoder" in index or "text_encoder_2" in index:
                from gasbench.teachers.text_to_image import TextToImageTeacher

                return TextToImageTeacher.from_folder(folder, spec=spec, name=teacher_name(spec, **options),
                                                      guidance=options.get("guidance"), size=options.get("size"))
            component = next((c for c in ("unet", "transformer") if c in index), None)
            if component is None:
                raise GasbenchError(f"{folder}/model_index.json names no 'unet' or 'transformer' component; "
                                    f"gasbench needs a denoising network.")
            model_folder, scheduler_folder = folder / component, folder / "scheduler"
            vae_name = next((c for c in ("vae", "vqvae") if c in index), None)
            vae_path = folder / vae_name if vae_name else None
            pipeline = index.get("_class_name")
        else:
            model_folder, vae_path, pipeline = folder, None, None
            scheduler_folder = folder if (folder / "scheduler_config.json").is_file() else folder.parent / "scheduler"
        scheduler_file = scheduler_folder / "scheduler_config.json"
        if not scheduler_file.is_file():
            raise GasbenchError(f"no scheduler config for {model_folder}: expected {scheduler_file} (the schedule "
                                f"the model was trained with).")
        model = load_component(model_folder)
        vae = load_component(vae_path) if vae_path is not None else None
        kind = type(model).__name__
        if kind not in SUPPORTED_MODELS:
            raise GasbenchError(f"{model_folder} holds a {kind}; gasbench's diffusers teacher supports "
                                f"{', '.join(SUPPORTED_MODELS)} on their own, and SDXL, SD3 and Flux networks "
                                f"inside their full pipeline folders (with text encoders).")
        if kind == "UNet2DConditionModel":
            raise GasbenchError(f"{model_folder} is a text-conditioned UNet but {folder} has no text_encoder and "
                                f"tokenizer; use a full Stable Diffusion (or SDXL) pipeline folder or the sd15 teacher.")
        num_classes, null = _class_conditioning(model)
        guidance = options.get("guidance")
        if guidance is None:
            guidance = pipeline_default_guidance(pipeline) if null is not None else 1.0
        elif null is None:
            raise GasbenchError(f"'{spec}' has no unconditional input, so ?guidance= cannot apply.")
        name = teacher_name(spec, options.get("guidance"))
        if "size" in options:
            raise GasbenchError(f"?size= applies to text-to-image pipelines; {model_folder} samples at its network's size.")
        config = model.config
        size = config.sample_size if isinstance(config.sample_size, (tuple, list)) else (config.sample_size,) * 2
        return cls(name, model, json.loads(scheduler_file.read_text()), (config.in_channels, *size), vae=vae,
                   num_classes=num_classes, null_condition=null, guidance_scale=guidance,
                   weights_sha256=weights_digest([model_folder, scheduler_folder] + ([vae_path] if vae_path else [])),
                   spec=spec)


def _feature_module(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """The module whose output is the bottleneck feature, and its width."""
    config = model.config
    if getattr(model, "mid_block", None) is not None:
        return model.mid_block, config.block_out_channels[-1]
    if hasattr(model, "context_embedder"):  # MMDiT (SD3, Flux): the image tokens before the output projection
        return model.norm_out, config.num_attention_heads * config.attention_head_dim
    if hasattr(model, "transformer_blocks"):
        return model.transformer_blocks[-1], config.num_attention_heads * config.attention_head_dim
    if hasattr(model, "down_blocks"):
        return model.down_blocks[-1], config.block_out_channels[-1]
    raise GasbenchError(f"cannot find a bottleneck in a {type(model).__name__} (no mid_block or transformer_blocks).")


def _class_conditioning(model: torch.nn.Module) -> tuple[int, Optional[torch.Tensor]]:
    """(number of classes, null label for CFG or None): DiT reserves label num_classes for the
    dropped label it was trained with (Peebles & Xie, 2023); a UNet's class embedding has none."""
    config = model.config
    if type(model).__name__ == "DiTTransformer2DModel":
        classes = int(config.num_embeds_ada_norm or 0)
        return classes, torch.tensor([classes]) if classes else None
    return int(getattr(config, "num_class_embeds", None) or 0), None


def pipeline_default_guidance(pipeline: Optional[str]) -> float:
    """The default ``guidance_scale`` of the pipeline class's ``__call__`` (1.0 if it has none)."""
    import diffusers

    call = getattr(getattr(diffusers, pipeline or "", None), "__call__", None)
    default = inspect.signature(call).parameters.get("guidance_scale") if call is not None else None
    return float(default.default) if default is not None and isinstance(default.default, (int, float)) else 1.0


def _parse_spec(spec: str) -> tuple[str, dict]:
    spec, _, query = spec.partition("?")
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "guidance":
            try:
                options["guidance"] = float(value)
            except ValueError:
                raise GasbenchError(f"?guidance= needs a number, got '{value}'.") from None
        elif key == "size":
            match = re.fullmatch(r"(\d+)(?:x(\d+))?", value)
            if match is None or int(match[1]) < 1:
                raise GasbenchError(f"?size= needs pixels as HxW or N (e.g. ?size=1024x768), got '{value}'.")
            options["size"] = (int(match[1]), int(match[2] or match[1]))
        else:
            raise GasbenchError(f"unknown option '{key}' in the diffusers spec; the options are ?guidance=<scale> "
                                f"and ?size=<H>x<W>.")
    return spec, options


def teacher_name(spec: str, guidance: Optional[float] = None, size: Optional[tuple[int, int]] = None) -> str:
    """A filesystem-safe teacher name: ``diffusers-<last path component>[-cfg<w>][-<H>x<W>]``."""
    last = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec.rstrip("/\\")).name or "model").strip("._") or "model"
    return (f"diffusers-{last}" + (f"-cfg{guidance:g}" if guidance is not None else "")
            + (f"-{size[0]}x{size[1]}" if size is not None else ""))


def resolve_folder(spec: str) -> Path:
    """A local folder, or the hub snapshot diffusers downloads for ``owner/name``."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GasbenchError(f"{path} is a file; a diffusers teacher is a folder with model_index.json, or "
                                f"a model folder with config.json and scheduler_config.json.")
        if not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
            raise GasbenchError(f"{path} has neither model_index.json (a pipeline) nor config.json (a model); "
                                f"save one with diffusers' save_pretrained.")
        return path
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec):
        raise GasbenchError(f"'{spec}' is neither an existing folder nor a Hugging Face hub id (owner/name).")
    from diffusers import DiffusionPipeline

    offline = os.environ.get("GASBENCH_OFFLINE") == "1"
    try:  # the safety checker and image encoders play no part in sampling: not downloaded
        return Path(DiffusionPipeline.download(spec, local_files_only=offline, safety_checker=None,
                                               feature_extractor=None, image_encoder=None))
    except Exception as exc:  # network, missing repo, gated repo: one message for all
        raise GasbenchError(
            f"could not get the diffusers pipeline '{spec}' from the Hugging Face hub"
            f"{' (GASBENCH_OFFLINE=1: local cache only)' if offline else ''}: {type(exc).__name__}: {exc}. "
            f"Check the id and your network, or download it (huggingface-cli download {spec}) and pass the folder."
        ) from exc


def load_component(folder: Path) -> torch.nn.Module:
    """A diffusers model saved with save_pretrained, by the ``_class_name`` of its config.json."""
    import diffusers

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GasbenchError(f"{config_file} does not exist; the component folder is incomplete.")
    class_name = json.loads(config_file.read_text()).get("_class_name", "")
    model_class = getattr(diffusers, class_name, None)
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        raise GasbenchError(f"{config_file} names the class '{class_name}', which diffusers "
                            f"{diffusers.__version__} does not have.")
    # low_cpu_mem_usage needs `accelerate`; without it diffusers warns and loads normally anyway
    return model_class.from_pretrained(folder, low_cpu_mem_usage=False)


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_digest(folders: list[Path]) -> str:
    """sha256 over the config and weight files of the loaded component folders.

    Per folder: the config files and the weights diffusers/transformers load by default, i.e.
    safetensors if there are any, else .bin, skipping variants (name.fp16.safetensors).
    """
    digest = hashlib.sha256()
    for folder in folders:
        files = sorted(folder.glob("*.json"))
        for suffix in WEIGHT_SUFFIXES:
            weights = sorted(p for p in folder.glob(f"*{suffix}") if p.name.count(".") == 1)
            if weights:
                files += weights
                break
        for path in files:
            digest.update(f"{folder.name}/{path.name}:{sha256_of(path)}\n".encode())
    return digest.hexdigest()
