"""The Teacher contract: a pretrained diffusion model seen as an EDM sigma-space denoiser.

Everything is solved in x_sigma = x_0 + sigma * eps. A teacher exposes the denoiser
D(x, sigma, cond) -> x_0 estimate, its sample shape, sigma range, how conditions are drawn per
seed, how samples decode to pixels, and its reference solver (the "teacher" row of the
leaderboards, GAS Table 17). VP / epsilon-prediction networks are wrapped with
sigma = sqrt((1 - alphabar) / alphabar), x_vp = x / sqrt(1 + sigma^2), D = x - sigma * eps.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.phases import phase
from gasbench.core.weights import WeightsSource, weights_dir
from gasbench.teachers.protocol import EvaluationProtocol
from gasbench.teachers.time import VPLinearTime


@dataclass(frozen=True)
class ReferenceSolver:
    """The teacher's own high-accuracy solver (GAS Table 17)."""

    solver: str
    nfe: int
    schedule: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "nfe": self.nfe, "schedule": self.schedule, **self.options}


@dataclass(frozen=True)
class WeightsDeclaration:
    """The pretrained weights a teacher kind loads, as `gasbench teachers` lists them.

    One of: a release file (``source``: looked for in ``$GASBENCH_HOME/weights``, downloaded from
    its URL, pinned by its sha256), a file that ships with gasbench (``shipped`` and its ``pin``),
    a diffusers hub pipeline (``hub_id``), or nothing (analytic teachers, the default).
    """

    source: Optional[WeightsSource] = None
    shipped: Optional[Path] = None
    pin: Optional[str] = None
    hub_id: Optional[str] = None
    # how a shipped file is rebuilt, or what a teacher without weights is
    note: str = ""

    @property
    def path(self) -> Optional[Path]:
        """The file looked for (None for a hub pipeline or no weights)."""
        return weights_dir() / self.source.filename if self.source is not None else self.shipped

    @property
    def sha256(self) -> Optional[str]:
        """The pinned sha256 of :attr:`path` (None: not pinned)."""
        return self.source.sha256 if self.source is not None else self.pin

    def obtained(self) -> str:
        """How the weights are obtained."""
        if self.source is not None:
            return self.source.url or "its authors (no public URL)"
        if self.hub_id is not None:
            return "downloaded by diffusers on first use, or --weights FOLDER"
        return self.note


def declared_weights(factory: Any) -> WeightsDeclaration:
    """The weights declaration of a registered teacher factory: a Teacher class's
    :attr:`Teacher.weights`, or the ``weights`` a factory function was given (none: no weights)."""
    if isinstance(factory, type):
        return factory.weights
    return vars(factory).get("weights", WeightsDeclaration())


class Teacher(ABC):
    """A diffusion model in EDM sigma-space, plus everything a benchmark needs to know about it."""

    name: ClassVar[str] = ""
    shape: tuple[int, ...]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    num_classes: int = 0
    default_schedule: str = "logsnr"
    time: VPLinearTime = VPLinearTime()
    reference: ReferenceSolver
    weights_sha256: Optional[str] = None
    # how its cells are scored when the command line does not say: metrics, samples, real images
    protocol: EvaluationProtocol = EvaluationProtocol()
    # the pretrained weights this teacher kind loads; `gasbench teachers` lists them
    weights: ClassVar[WeightsDeclaration] = WeightsDeclaration()
    # feature space of the domain FD and precision/recall (gasbench.features); None: Inception only
    domain_space: Optional[str] = None

    # length of the per-sample feature vector of :meth:`denoise_with_features`
    feature_dim: int = 4
    # where the networks run, and "bf16" to run them under bfloat16 autocast (``gasbench run
    # --device/--precision``); the solvers' own arithmetic stays in the caller's dtype
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    # the training budget learned solvers get when `gasbench run --budget` is not given: ``paper``
    # (each method's own paper's settings) on the papers' teachers, ``cpu`` on the built-in ones
    default_budget: str = "paper"
    # what the papers' settings depend on: ``pixel``, ``latent`` (a VAE decodes samples) or ``text``
    modality: str = "pixel"
    # while a learned solver trains, the per-sample network passes its denoiser calls make
    passes: Optional["NetworkPasses"] = None

    def modules(self) -> list[torch.nn.Module]:
        """The networks :meth:`to` moves (none for analytic teachers)."""
        return []

    def to(self, device: "torch.device | str") -> "Teacher":
        """Move the teacher's networks to ``device``."""
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self

    def autocast(self):
        """The context network calls run in: bfloat16 autocast when ``precision == "bf16"``."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """The x_0 estimate D(x, sigma, cond); x has shape (B, *shape), sigma is a scalar tensor
        or, for solvers that choose their steps per sample (DLMS), of shape (B,)."""

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """D(x, sigma, cond) and a (B, :attr:`feature_dim`) feature vector of the same evaluation,
        without another network call (what DLMS's designer network reads).

        Network teachers return their bottleneck. This default, for teachers without one (the
        analytic ones), is a substitute computed from the evaluation itself: the per-sample mean
        and standard deviation of D and of the network-scaled input x / sqrt(sigma^2 + sigma_data^2),
        all of order one at every noise level.
        """
        denoised = self.denoise(x, sigma, cond)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        scaled = x.to(torch.float64).flatten(1) / (sigma**2 + self.sigma_data**2).sqrt()
        flat = denoised.to(torch.float64).flatten(1)
        features = torch.stack([flat.mean(1), flat.std(1), scaled.mean(1), scaled.std(1)], dim=1)
        return denoised, features

    def denoiser(self, cond: Optional[torch.Tensor]) -> "BoundDenoiser":
        """D(x, sigma) with the condition bound, in the caller's dtype (what the executor calls)."""
        return BoundDenoiser(self, cond)

    def conditions(self, generators: list[torch.Generator]) -> Optional[torch.Tensor]:
        """One condition per sample, drawn from that sample's own generator (after its noise).

        Class labels are uniform over classes and random per seed (not balanced); None for an
        unconditional teacher.
        """
        if self.num_classes == 0:
            return None
        return torch.cat([torch.randint(self.num_classes, (1,), generator=g) for g in generators])

    def under(self, protocol: EvaluationProtocol) -> "Teacher":
        """This teacher evaluated under ``protocol`` (e.g. with the user's ``--reference-images``):
        a shallow copy sharing the networks; this teacher and its class keep their own protocol."""
        evaluated = copy.copy(self)
        evaluated.protocol = protocol
        return evaluated

    def real_images(self) -> Optional[tuple[torch.Tensor, str]]:
        """Real images in [0, 1], (N, C, H, W), that distribution metrics compare with, and a
        description of where they come from: the protocol's set (:meth:`EvaluationProtocol.real_image_path`),
        else None. Teachers with their own data override this."""
        from gasbench.core.images import read_image_set

        path = self.protocol.real_image_path()
        return None if path is None else read_image_set(path)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples to pixels in [0, 1], shape (B, C, H, W); pixel teachers live in [-1, 1]."""
        return ((x.float() + 1) / 2).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        """What a result record stores about the teacher."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "num_classes": self.num_classes,
            "weights_sha256": self.weights_sha256,
            "reference": self.reference.to_dict(),
        }


@dataclass
class NetworkPasses:
    """Per-sample network evaluations counted at the denoiser: every sample a call evaluates is
    one ``forward``; one evaluated with autograd recording is also one ``backward`` (training
    back-propagates through it). A training budget is the sum of both (GAS Tables 14-16's cost
    is dominated by them)."""

    forward: int = 0
    backward: int = 0

    def add(self, count: int) -> None:
        self.forward += count
        self.backward += count if torch.is_grad_enabled() else 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class BoundDenoiser:
    """A teacher's denoiser with its condition bound: ``D(x, sigma)``, and
    ``with_features(x, sigma) -> (D, features)`` for adaptive tables; outputs in x's dtype."""

    def __init__(self, teacher: Teacher, cond: Optional[torch.Tensor]):
        self.teacher, self.cond = teacher, cond

    def _on_device(self, x: torch.Tensor, sigma: torch.Tensor):
        if self.teacher.passes is not None:
            self.teacher.passes.add(len(x))
        device = self.teacher.device
        cond = None if self.cond is None else self.cond.to(device)
        return x.to(device), torch.as_tensor(sigma).to(device), cond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # solvers keep their state where the caller put it (the CPU in gasbench); only the
        # network's input and output cross to the teacher's device
        with phase("network_forward"):
            denoised = self.teacher.denoise(*self._on_device(x, sigma))
        return self._finite(denoised.to(x.device, x.dtype), x, sigma)

    def with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with phase("network_forward"):
            denoised, features = self.teacher.denoise_with_features(*self._on_device(x, sigma))
        return self._finite(denoised.to(x.device, x.dtype), x, sigma), features.to(x.device)

    def _finite(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``denoised``, unless the network made NaN or inf from a finite input: then nothing
        computed from it may be scored or cached, and the run stops here."""
        if bool(torch.isfinite(denoised).all()):
            return denoised
        sigmas = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(sigmas).all())):
            return denoised  # a diverging solver's input: its samples are scored as they are
        bf16 = " or bfloat16 overflowed (try --precision fp32)" if self.teacher.precision == "bf16" else ""
        raise GasbenchError(
            f"teacher '{self.teacher.name}' returned NaN or inf for a finite input at sigma {float(sigmas.min()):.4g}"
            f"{'' if sigmas.numel() == 1 else f'-{float(sigmas.max()):.4g}'}: its network or weights are broken{bf16}. "
            f"The run stops before recording anything computed from it (cells already recorded are kept); check "
            f"the weights (`gasbench teachers --check`) or the teacher's code."
        )
