"""The GAS release's files, read without running anything in them: the authors' trained GS/GAS
students (hub ``bayes-group-diffusion/GAS-students``) and teacher datasets
(``bayes-group-diffusion/GAS-teachers``). Oganov et al. (2025), arXiv:2510.17699.

Formats, as the release's code writes and reads them (github.com/3145tttt/GAS, ``main.py``,
``training.py``, ``generate.py``, ``collate.py``, ``src/gas/gs_wrapper.py``,
``src/gas/generalized_solver.py``, ``src/gas/base_model.py``, ``configs/``):

* **Student** (``torch.save`` of ``{"ema", "model", "optim", "step"}``): ``ema`` is torch_ema's
  state (``decay``, ``num_updates``, ``shadow_params``, ``collected_params``); ``generate.py``
  samples with ``shadow_params``, a list in the order the solver registered its parameters:
  ``mu_logit`` (N-1,), ``t_couple`` (N,), then ``c1_diff``, ``a1_diff``, ..., ``cN_diff``,
  ``aN_diff``, each (N,), for N = NFE (the release sets the solver order to N). Read with
  ``torch.load(weights_only=True)`` by :func:`read_release_student`; the student as a solver is
  :mod:`gasbench.solvers.release`.
* **Teacher data** (``dataset.pkl``, a plain pickle of a ``defaultdict``): ``noise`` (n, C, H, W)
  float32 unit noise, ``images`` (the teacher's samples in [-1, 1], decoded for latent models),
  ``latents`` (latent models' samples, else a list of None), ``condition`` (class labels, a list
  of prompts, or a list of None). Read by :func:`load_release_teacher_data` through
  :mod:`gasbench.core.safe_pickle`'s ``gas-dataset`` allow-list (tensors, dicts, lists and prompt strings).
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from gasbench.core import safe_pickle
from gasbench.core.errors import GasbenchError
from gasbench.core.weights import sha256_of

RELEASE = "GAS release (Oganov et al., 2025, arXiv:2510.17699; github.com/3145tttt/GAS)"
# student_solver_config.t_eps of the release's configs, by its dataset folder on the hub
RELEASE_STUDENT_T_EPS = {"cifar10": 1e-3, "ffhq": 1e-4, "afhqv2": 1e-4, "lsun_beds256": 1e-3,
                         "cin256-v2": 1e-3, "sd-v1": 1e-3}
# gasbench teachers that are the release's teachers, and their hub folder
RELEASE_DATASET_OF_TEACHER = {"cifar10": "cifar10", "ffhq": "ffhq", "afhqv2": "afhqv2", "lsun-bedroom": "lsun_beds256",
                              "imagenet256": "cin256-v2", "sd15": "sd-v1"}
# The release's seed convention (README): teacher data from seeds 0-49,999 and students evaluated
# on 50,000-99,999; MS-COCO prompts 0-29,999 and 30,000-59,999.
RELEASE_SEED_CONVENTION = ("teacher data from seeds 0-49,999, evaluation from seeds 50,000-99,999 "
                           "(MS-COCO prompts: 0-29,999 and 30,000-59,999)")

# --- the authors' student files -------------------------------------------------------------------


def _unsafe_message(path: Path, exc: Exception, what: str) -> str:
    # torch's message suggests weights_only=False, the one thing never to do with such a file:
    # keep only the line that names what was refused
    lines = [line.strip() for line in str(exc).splitlines()
             if "GLOBAL" in line or "Unsupported" in line or "not an allowed" in line]
    refused = lines[0] if lines else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return (f"{path} is not a GAS release {what} that loads safely ({refused}); it was refused before anything "
            f"in it ran. gasbench reads these files with torch.load(weights_only=True) only; if it is a genuine "
            f"release file, it may be damaged: download it again.")


def read_release_student(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The release parameters (float64, see :class:`ReleaseStudent`, without ``t_eps``) of a student
    file and what is known about it (sha256, training step, EMA decay and updates)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GasbenchError(f"release student {path} does not exist.")
    try:
        with warnings.catch_warnings():  # torch's remark on a plain pickle's protocol; the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GasbenchError(_unsafe_message(path, exc, "student")) from None
    except Exception as exc:  # truncated, not a torch file at all
        raise GasbenchError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc}).") from None
    ema = blob.get("ema") if isinstance(blob, dict) else None
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list) or len(shadow) < 4 or not all(isinstance(p, torch.Tensor) for p in shadow):
        raise GasbenchError(
            f"{path} is not a GAS release student: it needs the torch_ema state 'ema' with a list "
            f"'shadow_params' (mu_logit, t_couple, then c1_diff, a1_diff, ... per order), as the release's "
            f"training.py saves it.")
    nfe = shadow[1].numel()
    shapes = [tuple(p.shape) for p in shadow]
    if len(shadow) != 2 + 2 * nfe or shapes != [(nfe - 1,)] + [(nfe,)] * (1 + 2 * nfe):
        raise GasbenchError(
            f"{path} holds EMA parameters of shapes {shapes}; a release GS student at NFE N has mu_logit (N-1,), "
            f"t_couple (N,) and 2N coefficient vectors (N,) (order N = NFE, as the release trains and samples).")
    shadow = [p.detach().to(torch.float64) for p in shadow]
    params = {"mu_logit": shadow[0], "t_couple": shadow[1],
              "c_diff": torch.stack(shadow[2::2], dim=1), "a_diff": torch.stack(shadow[3::2], dim=1)}
    if not all(bool(torch.isfinite(v).all()) for v in params.values()):
        raise GasbenchError(f"{path} holds non-finite student parameters.")
    number = lambda value, kind: kind(value) if isinstance(value, (int, float, torch.Tensor)) else None  # noqa: E731
    info = {"source": RELEASE, "file": path.name, "sha256": sha256_of(path), "nfe": nfe,
            "release_step": number(blob.get("step"), int), "ema_decay": number(ema.get("decay"), float),
            "ema_updates": number(ema.get("num_updates"), int)}
    return params, info


# --- the teacher datasets ----------------------------------------------------------------------


def release_noise(seeds: Sequence[int], shape: Sequence[int], device: Union[str, torch.device] = "cuda"
                  ) -> torch.Tensor:
    """The release's noise (``generate.py``'s StackedRandomGenerator): sample s from its own
    ``torch.Generator(device).manual_seed(s % 2**32)``. The release draws on CUDA, whose stream
    differs from the CPU's, so gasbench's CPU noise for seed s is not the release's."""
    return torch.stack([torch.randn(tuple(shape), device=device,
                                    generator=torch.Generator(device).manual_seed(int(s) % (1 << 32)))
                        for s in seeds])


def release_seed_order(seeds: Sequence[int], batch: int, gpus: int = 1, keep: Optional[int] = None) -> list[int]:
    """The seed of each sample of a collated ``dataset.pkl``, which stores none: ``generate.py``
    splits the seeds into ((n - 1) // (batch x gpus) + 1) x gpus near-equal batches, saves each as
    ``<first seed>.pt``, and ``collate.py`` concatenates those files in *string* order
    (``sorted(os.listdir)``: 0, 1021, 10210, ...), then keeps the first ``keep`` samples."""
    seeds = [int(s) for s in seeds]
    count = ((len(seeds) - 1) // (batch * gpus) + 1) * gpus
    batches = [b.tolist() for b in torch.as_tensor(seeds).tensor_split(count) if len(b)]
    order = [s for b in sorted(batches, key=lambda b: f"{b[0]}.pt") for s in b]
    return order[:keep]


# scripts/teachers.sh: (seeds, batch per GPU, GPUs) per kind of teacher output
RELEASE_DATA_LAYOUT = {"pixels": (range(50_000), 1024, 1), "latents": (range(50_000), 64, 1),
                       "prompts": (range(30_000), 16, 3)}


@dataclass
class ReleaseTeacherData:
    """A release teacher dataset: ``noise`` (n, *shape) unit noise; ``x0`` the teacher's samples the
    release trains against (``images`` for pixel teachers, ``latents`` for latent ones), as the
    release stores them, i.e. the VP state at the teacher's t_eps (alpha(t_eps) x, alpha > 0.999);
    ``cond`` class labels (n,) or None; ``prompts`` for text-to-image data; ``seeds`` inferred by
    :func:`release_seed_order`; ``info`` what was read and assumed."""

    noise: torch.Tensor
    x0: torch.Tensor
    cond: Optional[torch.Tensor]
    prompts: Optional[list[str]]
    seeds: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.noise)

    def training_pairs(self, teacher, train_size: int, validation_size: int
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(train, validation) dicts for :meth:`LearnedSolver.fit`, split as the release's
        ``SyntDataLoaders``: the first ``train_size`` samples and the last ``validation_size``.

        The release's trajectories start at its t = 1, so the pairs are ``teacher``'s only when its
        sigma_max is sigma(1) of the release's schedule; otherwise this is an error.
        """
        if tuple(self.noise.shape[1:]) != tuple(teacher.shape):
            raise GasbenchError(f"the release data has samples of shape {tuple(self.noise.shape[1:])}; "
                                f"teacher '{teacher.name}' has {tuple(teacher.shape)}.")
        if train_size < 1 or validation_size < 1 or train_size + validation_size > len(self):
            raise GasbenchError(f"{train_size} train + {validation_size} validation pairs do not fit in the "
                                f"{len(self)} samples of the release data without overlap.")
        # the release's integration time is the student solver's (its code hash covers it), and
        # gasbench.solvers.release imports this module: hence imported here
        from gasbench.solvers.release import release_time

        start = float(release_time(teacher)[0].sigma(torch.tensor(1.0, dtype=torch.float64)))
        if abs(teacher.sigma_max / start - 1) > 1e-3:
            raise GasbenchError(
                f"the release's teacher trajectories start at sigma = {start:.4g} (its t = 1), teacher "
                f"'{teacher.name}' at sigma_max = {teacher.sigma_max:g}: a student trained on these pairs would "
                f"start from another noise level than it is evaluated at. Use a teacher whose sigma_max is "
                f"{start:.6g}.")
        tensors = {"noise": self.noise, "x0": self.x0, **({"cond": self.cond} if self.cond is not None else {})}
        return ({k: v[:train_size] for k, v in tensors.items()},
                {k: v[len(self) - validation_size :] for k, v in tensors.items()})


def load_release_teacher_data(path: Path, seeds: Optional[Sequence[int]] = None, batch: Optional[int] = None,
                              gpus: Optional[int] = None) -> ReleaseTeacherData:
    """Read a release ``dataset.pkl`` (``collate.py``'s plain pickle) without running anything in it.

    ``seeds``, ``batch``, ``gpus``: how ``generate.py`` made it, to infer each sample's seed
    (default: ``scripts/teachers.sh``, see :data:`RELEASE_DATA_LAYOUT`); the noise itself is
    stored, so training never depends on that inference.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GasbenchError(f"release teacher data {path} does not exist.")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    blob = safe_pickle.load(path, "gas-dataset")
    return _teacher_data(blob, path, digest.hexdigest(), seeds, batch, gpus)


def _teacher_data(blob: Any, path: Path, sha256: str, seeds, batch, gpus) -> ReleaseTeacherData:
    missing = {"noise", "images", "latents", "condition"} - set(blob) if isinstance(blob, dict) else {"all keys"}
    if missing:
        raise GasbenchError(f"{path} is not a GAS teacher dataset: it lacks {', '.join(sorted(missing))} "
                            f"(noise, images, latents and condition, as the release's collate.py writes them).")
    noise, images, latents, condition = (blob[k] for k in ("noise", "images", "latents", "condition"))
    if not isinstance(noise, torch.Tensor) or noise.dim() < 2:
        raise GasbenchError(f"{path}: 'noise' is not a batch of tensors.")
    n = len(noise)
    latent = isinstance(latents, torch.Tensor)
    x0 = latents if latent else images
    if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != tuple(noise.shape):
        raise GasbenchError(f"{path}: the teacher's samples ('{'latents' if latent else 'images'}') do not match "
                            f"the noise's shape {tuple(noise.shape)}.")
    cond, prompts = None, None
    if isinstance(condition, torch.Tensor):
        cond = condition.long()
    elif isinstance(condition, list) and condition and all(isinstance(c, str) for c in condition):
        prompts = list(condition)
    elif not (isinstance(condition, list) and all(c is None for c in condition)):
        raise GasbenchError(f"{path}: 'condition' is neither class labels, prompts nor empty.")
    if len(condition) != n:
        raise GasbenchError(f"{path}: {len(condition)} conditions for {n} samples.")
    kind = "prompts" if prompts is not None else ("latents" if latent else "pixels")
    default_seeds, default_batch, default_gpus = RELEASE_DATA_LAYOUT[kind]
    seeds = list(default_seeds if seeds is None else seeds)
    batch, gpus = batch or default_batch, gpus or default_gpus
    if len(seeds) < n:
        raise GasbenchError(f"{path} holds {n} samples, more than the {len(seeds)} seeds it was said to come from.")
    order = release_seed_order(seeds, batch, gpus, keep=n)
    info = {
        "source": RELEASE, "file": path.name, "sha256": sha256, "samples": n, "teacher_output": kind,
        "x0": f"the release's stored {'latents' if latent else 'images'}: VP state at the teacher's t_eps",
        "seed_convention": RELEASE_SEED_CONVENTION,
        "seed_order": (f"inferred, not stored: seeds {seeds[0]}-{seeds[-1]} in batches of {batch} on {gpus} GPU(s), "
                       f"batch files concatenated in string order (collate.py)"),
        "noise_generator": "torch.Generator('cuda').manual_seed(seed) per sample (not gasbench's CPU stream)",
        "conditions": ("prompt = line (seed mod lines) of the release's data/coco_captions.txt" if prompts is not None
                       else "class label = seed mod 1000 (LDMModel.iterate_condition)" if cond is not None else "none"),
    }
    return ReleaseTeacherData(noise.float(), x0.float(), cond, prompts, torch.tensor(order, dtype=torch.int64), info)
