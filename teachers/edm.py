"""EDM's released pixel-space networks as gasbench teachers: CIFAR-10 32, FFHQ 64, AFHQv2 64.

GAS (Table 17) distils its students from the three unconditional "-vp" releases of Karras et al.
(EDM, NeurIPS 2022), which are DDPM++ networks with EDM's preconditioning
(:mod:`gasbench.teachers.edm_networks`, read from the release pickles by
:mod:`gasbench.teachers.edm_pickle`), and uses UniPC (bh1, order 3, logSNR steps, NFE 20) as the
teacher solver. The releases are registered from one table, :data:`EDM_RELEASES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.core.weights import WeightsSource, resolve_weights
from gasbench.teachers.base import ReferenceSolver, Teacher, WeightsDeclaration
from gasbench.teachers.edm_pickle import load_edm_pickle
from gasbench.teachers.protocol import EvaluationProtocol
from gasbench.teachers.time import VPLinearTime

RELEASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


class EDMTeacher(Teacher):
    """An unconditional EDM release network (a SongUNet behind one of EDM's preconditionings).

    ``weights`` is the user's own copy or their own EDM-trained network pickle; otherwise the
    release file is looked for in ``$GASBENCH_HOME/weights`` and downloaded from NVIDIA's CDN.
    Sigma range 0.002-80 as in EDM's sampler; the reference is GAS Table 17's teacher solver.
    """

    # GAS Table 17 / the GAS release solve these networks on VP time t in [1e-4, 1] (beta 0.1-20):
    # sigma(1e-4) = 0.0032 to sigma(1) = 152.2, so the reference, the schedules and the release's
    # teacher data and students share one interval (EDM's own sampler uses 0.002-80)
    sigma_min = VPLinearTime().sigma(torch.tensor(1e-4, dtype=torch.float64)).item()
    sigma_max = VPLinearTime().sigma(torch.tensor(1.0, dtype=torch.float64)).item()
    default_schedule = "logsnr"
    reference = ReferenceSolver("unipc", 20, "logsnr", {"order": 3})

    def __init__(self, weights: Optional[Path] = None):
        path, self.weights_sha256 = resolve_weights(self.weights.source, self.name, weights)
        net, _ = load_edm_pickle(path, self.weights_sha256)
        found = (net.img_channels, net.img_resolution, net.img_resolution)
        if found != tuple(self.shape) or net.label_dim:
            raise GasbenchError(
                f"{path} is a {'class-conditional ' if net.label_dim else ''}network for {found} images; teacher "
                f"'{self.name}' is unconditional at {tuple(self.shape)}.")
        self.net = net
        self.feature_dim = net.model.bottleneck_channels

    def modules(self) -> list[nn.Module]:
        return [self.net]

    def _evaluate(self, x: torch.Tensor, sigma: torch.Tensor, bottleneck: bool):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        with self.autocast():
            return self.net(x, sigma, bottleneck=bottleneck)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        return self._evaluate(x, sigma, False).to(x.dtype)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """D and the UNet's bottleneck (the lowest-resolution features entering the first skip-connected
        decoder block, mean-pooled over space) of one pass."""
        denoised, features = self._evaluate(x, sigma, True)
        return denoised.to(x.dtype), features


def _release(title: str, filename: str, sha256: Optional[str]) -> WeightsSource:
    return WeightsSource(f"EDM's {title} network (Karras et al. 2022, NVIDIA, CC BY-NC-SA 4.0)", filename,
                         RELEASE_URL + filename, sha256)


# The EDM releases the papers distil (GAS D.4.1): name -> (image shape, title, file, pinned sha256,
# the real-image set). Pins: CIFAR-10 from independent public projects that verify the file before
# use; FFHQ from one such project (with its size, 247,513,128 bytes); AFHQv2 has no trustworthy
# published sha256, so the file's own hash is recorded.
EDM_RELEASES = {
    "cifar10": ((3, 32, 32), "CIFAR-10 32x32 unconditional", "edm-cifar10-32x32-uncond-vp.pkl",
                "4d5dcc1f1d0d41c8934ad21626eeddbdc0460182becf9fc059a0631b1eedb4da", "cifar10-32x32.zip"),
    "ffhq": ((3, 64, 64), "FFHQ 64x64 unconditional", "edm-ffhq-64x64-uncond-vp.pkl",
             "f6f8f24a2b46ae79807b0f919e2550c6ed37cc3f8b7a2100629092cad9b5d2f5", "ffhq-64x64.zip"),
    "afhqv2": ((3, 64, 64), "AFHQv2 64x64 unconditional", "edm-afhqv2-64x64-uncond-vp.pkl", None, "afhqv2-64x64.zip"),
}


def _register_release(name: str, shape: tuple[int, int, int], title: str, filename: str, sha256: Optional[str],
                      real_images: str) -> type:
    cls = type(f"EDM_{name}_Teacher", (EDMTeacher,), {
        "name": name, "shape": shape, "weights": WeightsDeclaration(source=_release(title, filename, sha256)),
        "protocol": EvaluationProtocol(metrics=("fid", "rmse", "psnr"), real_images=real_images), "__module__": __name__, "__doc__": f"EDM's released {title} network as a teacher."})
    description = f"EDM DDPM++ with EDM preconditioning, {title.replace(' unconditional', '')}, unconditional (NVIDIA release)"
    return register_teacher(name, description=description)(cls)


RELEASE_TEACHERS = {name: _register_release(name, *spec) for name, spec in EDM_RELEASES.items()}
