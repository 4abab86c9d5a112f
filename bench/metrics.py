"""Metrics as registered plugins; each declares its direction (:data:`DIRECTIONS`) and what it compares.

Paired metrics compare a method's samples with the teacher's own solution from the same noise and
condition (RMSE, L1, L2, PSNR, LPIPS). Distribution metrics compare the samples with real images in
a feature space (FID on Inception features, the domain FD on a built-in teacher's classifier
features, their kernel counterparts KID and KD, and precision / recall / density / coverage, GAS
Appendix B.6 after Naeem et al. 2020),
so they also score the teacher itself: the "teacher" row of the leaderboards.

A plugin adds a metric with::

    @metric("my-metric", direction="lower", description="...")
    def my_metric(evaluation: Evaluation) -> float: ...
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional

import numpy as np
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import METRICS, register_metric
from gasbench.features import domain_space, feature_space

# Which value of a metric is best: the lowest, the highest, or the teacher's own (its row in the
# tables). Precision, recall, density and coverage score samples against real images (Naeem et al.
# 2020), so a sampler that blurs or drops modes can beat its teacher on them (dpmpp2m at NFE 4 on
# digits: precision 0.99 and density 1.32 against the teacher's 0.95 and 0.94, recall 0.81 against
# 0.97); a sampler should reproduce its teacher, so they rank by |value - teacher's value|.
DIRECTIONS = ("lower", "higher", "teacher")
PRDC_NEAREST_K = 5  # Naeem et al. (2020) and GAS Appendix B.6
PRDC_REAL_SUBSET_SEED = 0


@dataclass
class Evaluation:
    """What a metric sees for one cell: the samples, the teacher's solution from the same noise
    (None when scoring the teacher itself), the teacher and the samples' conditions. Decoded images and features are
    computed once and shared by every metric of the cell."""

    samples: torch.Tensor
    reference: Optional[torch.Tensor]
    teacher: Any
    cond: Optional[torch.Tensor] = None  # each sample's condition (class label, prompt index)
    _cache: dict = field(default_factory=dict, repr=False)

    def once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def decoded(self) -> torch.Tensor:
        return self.once("decoded", lambda: self.teacher.decode(self.samples))

    def decoded_reference(self) -> torch.Tensor:
        return self.once("decoded_reference", lambda: self.teacher.decode(self.paired_reference()))

    def paired_reference(self) -> torch.Tensor:
        if self.reference is None:
            raise GasbenchError("a paired metric needs the teacher's sample from the same noise")
        return self.reference

    def features(self, space: str) -> np.ndarray:
        return self.once(("features", space), lambda: feature_space(space).extract_all(self.decoded(), self.teacher))

    def real_features(self, space: str) -> np.ndarray:
        return self.once(("real", space), lambda: feature_space(space).reference(self.teacher)[0])


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # one of DIRECTIONS
    compute: Callable[[Evaluation], float]
    description: str
    paired: bool
    provenance: Optional[Callable[[Any], dict]] = None

    def describe(self, teacher) -> dict[str, Any]:
        """What a record stores about how the metric was computed for ``teacher``. (Records written
        before directions stored ``higher_is_better`` here; nothing reads it back, so they still load.)"""
        out = {"description": self.description, "direction": self.direction}
        return {**out, **self.provenance(teacher)} if self.provenance is not None else out


def metric(name: str, direction: str, description: str, paired: bool = True, provenance=None):
    if direction not in DIRECTIONS:
        raise GasbenchError(f"metric '{name}': direction '{direction}' is not one of {', '.join(DIRECTIONS)}.")
    if direction == "teacher" and paired:
        raise GasbenchError(f"metric '{name}': a paired metric compares with the teacher's own sample, so the "
                            "teacher has no value of it to be close to; give it direction 'lower' or 'higher'.")

    def wrap(fn):
        register_metric(name, description=description)(
            Metric(name, direction, fn, description, paired, provenance)
        )
        return fn

    return wrap


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


# --- paired metrics ------------------------------------------------------------------------------

def _difference(evaluation: Evaluation) -> torch.Tensor:
    return (evaluation.samples.double() - evaluation.paired_reference().double()).flatten(1)


@metric("rmse", direction="lower", description="Root mean squared distance to the teacher's sample from the same noise (sample space)")
def rmse(evaluation: Evaluation) -> float:
    return float(_difference(evaluation).pow(2).mean().sqrt())


@metric("l1", direction="lower", description="Mean absolute difference to the teacher's sample from the same noise (sample space)")
def l1(evaluation: Evaluation) -> float:
    return float(_difference(evaluation).abs().mean())


@metric("l2", direction="lower", description="Mean Euclidean distance per sample to the teacher's sample from the same noise (sample space)")
def l2(evaluation: Evaluation) -> float:
    return float(_difference(evaluation).norm(dim=1).mean())


@metric("psnr", direction="higher", description="PSNR (dB) of decoded images against the teacher's decoded sample from the same noise")
def psnr(evaluation: Evaluation) -> float:
    a, b = evaluation.decoded().double(), evaluation.decoded_reference().double()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


LPIPS_RESIZE = 224  # GAS upsamples to 224 for LPIPS; AlexNet's stride-4 stem also needs it for 8x8


def _lpips(net: str):
    def compute(evaluation: Evaluation) -> float:
        from gasbench.core.lpips_metric import lpips_distance

        model = lpips_model(net)[0]
        distances = lpips_distance(evaluation.decoded(), evaluation.decoded_reference(), model, resize_to=LPIPS_RESIZE)
        return float(distances.double().mean())

    def provenance(teacher) -> dict:
        return {"backbone": lpips_model(net)[1], "resize_to": LPIPS_RESIZE}

    return compute, provenance


@lru_cache(maxsize=2)
def lpips_model(net: str):
    from gasbench.core.lpips_metric import load_lpips

    return load_lpips(net)


for _net in ("alex", "vgg"):
    _compute, _provenance = _lpips(_net)
    metric(f"lpips-{_net}", direction="lower", provenance=_provenance,
           description=f"LPIPS ({_net}, images upsampled to {LPIPS_RESIZE}) to the teacher's sample from the same noise")(_compute)


# --- distribution metrics ------------------------------------------------------------------------

def _space_provenance(space_of: Callable[[Any], str]) -> Callable[[Any], dict]:
    def provenance(teacher) -> dict:
        return feature_space(space_of(teacher)).reference(teacher)[1]

    return provenance


def _frechet(space_of: Callable[[Any], str]) -> Callable[[Evaluation], float]:
    def compute(evaluation: Evaluation) -> float:
        from gasbench.fid import fid_from_features

        space = space_of(evaluation.teacher)
        return fid_from_features(evaluation.features(space), evaluation.real_features(space))

    return compute


def _inception(teacher) -> str:
    return "inception"


def _prdc_space(teacher) -> str:
    """Precision/recall use the teacher's domain space where it has one, else Inception."""
    return teacher.domain_space or "inception"


metric("fid", direction="lower", paired=False, provenance=_space_provenance(_inception),
       description="FID: Frechet distance of Inception-v3 features (clean-fid protocol) to the real images")(_frechet(_inception))
metric("fd", direction="lower", paired=False, provenance=_space_provenance(domain_space),
       description="Domain FD: Frechet distance to the real images in the teacher's domain space (built-in teachers: their classifier's features)")(_frechet(domain_space))


# clean-fid's kernel_distance defaults (clean-fid 0.1.35, cleanfid/fid.py:69), which its compute_kid uses
KID_NUM_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000
KID_SUBSET_SEED = 0


def kid_from_features(fake: np.ndarray, real: np.ndarray) -> float:
    """Unbiased KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the
    squared MMD under the kernel (x.y / d + 1)^3, averaged over ``KID_NUM_SUBSETS`` pairs of
    random subsets of min(len(fake), len(real), KID_MAX_SUBSET_SIZE) vectors each, computed by clean-fid's own
    ``kernel_distance`` with the arguments in clean-fid's order (real first: cleanfid/fid.py:416)."""
    if min(len(fake), len(real)) < 2:
        raise GasbenchError(f"KID needs at least 2 samples and 2 real images, got {len(fake)} and {len(real)}.")
    from cleanfid.fid import kernel_distance

    with _numpy_global_seed(KID_SUBSET_SEED):
        return kernel_distance(real, fake, num_subsets=KID_NUM_SUBSETS, max_subset_size=KID_MAX_SUBSET_SIZE)


@contextlib.contextmanager
def _numpy_global_seed(seed: int):
    """kernel_distance draws its subsets from numpy's global generator and takes no seed
    (cleanfid/fid.py:74-75); a benchmark value must not depend on what ran before, so the
    generator is seeded for the call and the caller's state put back after it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _kernel(space_of: Callable[[Any], str]) -> Callable[[Evaluation], float]:
    def compute(evaluation: Evaluation) -> float:
        space = space_of(evaluation.teacher)
        return kid_from_features(evaluation.features(space), evaluation.real_features(space))

    return compute


def _kid_provenance(space_of: Callable[[Any], str]) -> Callable[[Any], dict]:
    def provenance(teacher) -> dict:
        return {**_space_provenance(space_of)(teacher), "estimator": "unbiased MMD^2, kernel (x.y / d + 1)^3, raw (not x 1e3)",
                "subsets": KID_NUM_SUBSETS, "subset_size": f"min(samples, real images, {KID_MAX_SUBSET_SIZE})",
                "subset_seed": f"numpy global generator seeded {KID_SUBSET_SEED} around cleanfid.fid.kernel_distance"}

    return provenance


metric("kid", direction="lower", paired=False, provenance=_kid_provenance(_inception),
       description="KID: unbiased kernel distance of Inception-v3 features (clean-fid protocol and kernel_distance, raw value, not x 1e3) to the real images")(_kernel(_inception))
metric("kd", direction="lower", paired=False, provenance=_kid_provenance(domain_space),
       description="Domain KD: unbiased kernel distance (clean-fid's KID estimator, raw value) to the real images in the teacher's domain space")(_kernel(domain_space))


def prdc(evaluation: Evaluation) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k = 5, on as many real
    images (a fixed random subset) as samples, since the k-NN radii depend on the set sizes."""

    def compute() -> dict[str, float]:
        from prdc import compute_prdc

        space = _prdc_space(evaluation.teacher)
        fake = evaluation.features(space)
        real = evaluation.real_features(space)
        if len(fake) < PRDC_NEAREST_K + 2:
            raise GasbenchError(f"precision/recall need at least {PRDC_NEAREST_K + 2} samples, got {len(fake)}.")
        rng = np.random.default_rng(PRDC_REAL_SUBSET_SEED)
        subset = real[np.sort(rng.choice(len(real), size=min(len(real), len(fake)), replace=False))]
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            scores = compute_prdc(subset, fake, PRDC_NEAREST_K)
        return {k: float(v) for k, v in scores.items()}

    return evaluation.once("prdc", compute)


def _prdc_provenance(teacher) -> dict:
    return {**_space_provenance(_prdc_space)(teacher), "nearest_k": PRDC_NEAREST_K,
            "real_subset": f"as many real images as samples, numpy default_rng({PRDC_REAL_SUBSET_SEED})"}


for _name, _what in (("precision", "fraction of samples inside the real images' k-NN manifold"),
                     ("recall", "fraction of real images inside the samples' k-NN manifold"),
                     ("density", "mean count of real k-NN balls holding each sample, / k"),
                     ("coverage", "fraction of real images whose k-NN ball holds a sample")):
    metric(_name, direction="teacher", paired=False, provenance=_prdc_provenance,
           description=f"{_name.capitalize()} (Naeem et al. 2020, k={PRDC_NEAREST_K}): {_what}")(
        lambda evaluation, _name=_name: prdc(evaluation)[_name])


# --- text alignment ------------------------------------------------------------------------------

def _clip_score(evaluation: Evaluation) -> float:
    from gasbench.teachers.sd15 import clip_score

    _require_prompts(evaluation.teacher)
    prompts = evaluation.teacher.prompts_for(evaluation.cond)
    return clip_score(evaluation.decoded(), prompts, _clip_model(), device=evaluation.teacher.device)


def _require_prompts(teacher) -> None:
    if getattr(teacher, "prompts_for", None) is None:
        raise GasbenchError(f"clip-score compares images with their prompts; teacher '{teacher.name}' is not a "
                            "text-to-image teacher (use it with sd15 or a diffusers: Stable Diffusion folder).")


def _clip_model() -> str:
    """CLIP ViT-L/14 from the hub, or ``$GASBENCH_CLIP_MODEL`` (a hub id or a saved local folder)."""
    from gasbench.teachers.sd15 import CLIP_MODEL

    return os.environ.get("GASBENCH_CLIP_MODEL") or CLIP_MODEL


def _clip_provenance(teacher) -> dict:
    _require_prompts(teacher)
    return {"network": _clip_model(), "score": "100 * max(cos(image, text), 0), mean over samples (Hessel et al. 2021)",
            "prompts": getattr(teacher, "prompts_source", None)}


metric("clip-score", direction="higher", paired=False, provenance=_clip_provenance,
       description="CLIP score (ViT-L/14) of each sample with its own prompt, text-to-image teachers")(_clip_score)
