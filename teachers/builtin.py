"""The built-in CPU teachers: EDM-preconditioned UNets trained by this project on small datasets.

Both are class-conditional over 10 classes; each evaluation seed draws its class uniformly at
random. Their committed weights are reproduced by ``gasbench teacher train digits|fashion`` (the
recipes are :data:`gasbench.teachers.training.RECIPES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, Teacher, WeightsDeclaration
from gasbench.teachers.protocol import EvaluationProtocol
from gasbench.core.weights import verify_weights

WEIGHTS_DIR = Path(__file__).parent / "weights"


class NetworkTeacher(Teacher):
    """A teacher backed by an EDM-preconditioned network ``net(x, sigma, class_labels)`` that also
    returns its pooled bottleneck with ``bottleneck=True`` (:class:`~gasbench.teachers.networks.SmallEDMPrecond`)."""

    def __init__(self, net: torch.nn.Module, weights_sha256: Optional[str] = None):
        # channels-last: the convolutions of a fit's small batches run about 7% faster on a CPU,
        # sampling's 10% (benchmarks/profile.md); results agree with NCHW to 1e-6
        self.net = net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.weights_sha256 = weights_sha256
        self.feature_dim = net.model.bottleneck_channels

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        # sigma is rounded to float32, the precision the network was trained at
        with self.autocast():
            return self.net(x, torch.as_tensor(sigma, dtype=torch.float32), cond)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """D and the UNet's bottleneck (middle-block output, mean-pooled over space) of one pass."""
        with self.autocast():
            return self.net(x, torch.as_tensor(sigma, dtype=torch.float32), cond, bottleneck=True)


class BuiltinTeacher(NetworkTeacher):
    """A teacher whose weights ship with gasbench (``weights.shipped``, pinned by ``weights.pin``).

    ``weights`` overrides the file (its sha256 is then recorded but not checked against the pin).
    """

    num_classes = 10
    domain_space = "classifier"
    # UniPC-3 on logSNR as in GAS Table 17, at NFE 50 rather than 20: against a 200-step
    # DPM-Solver++(3M) solution its RMSE is 0.0009 (digits) and 0.0037 (fashion) at NFE 50, and
    # 0.010 / 0.015 at NFE 20, a quarter to a third of the NFE-10 methods' error.
    reference = ReferenceSolver("unipc", 50, "logsnr", {"order": 3})
    # 1,000 samples: small enough for a CPU; the leaderboards' 3 seed sets give the spread
    protocol = EvaluationProtocol(metrics=("fd", "precision", "recall", "density", "coverage", "rmse", "psnr"),
                                  samples=1000, full_reference_set=False)
    default_budget = "cpu"

    def __init__(self, weights: Optional[Path] = None):
        from gasbench.teachers.networks import load_network

        shipped, pin = self.weights.shipped, self.weights.pin
        rebuild = f"`gasbench teacher train {self.name} --out {shipped}`"
        if weights is None:
            verify_weights(shipped, pin, f"Reinstall gasbench or rebuild them with {rebuild}.")
            super().__init__(load_network(shipped), pin)
        else:
            from gasbench.core.weights import sha256_of

            super().__init__(self._users_network(Path(weights)), sha256_of(weights))

    def _users_network(self, path: Path) -> torch.nn.Module:
        """The network of a ``--weights`` file, checked to be one for this teacher's samples."""
        from gasbench.teachers.networks import load_network

        how = f"`gasbench teacher train {self.name} --out FILE` writes a {self.name} network file"
        if not path.is_file():
            raise GasbenchError(f"--weights {path} does not exist; {how}.")
        try:
            net = load_network(path)
        except (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise GasbenchError(f"--weights {path} is not a gasbench network file ({exc}); {how}.") from None
        config = net.config
        found = (config.img_channels, config.img_resolution, config.img_resolution)
        if found != tuple(self.shape) or config.num_classes != self.num_classes:
            raise GasbenchError(
                f"--weights {path} holds a network for {found} samples of {config.num_classes} classes; teacher "
                f"'{self.name}' samples {tuple(self.shape)} of {self.num_classes}; {how}."
            )
        return net

    def real_images(self) -> tuple[torch.Tensor, str]:
        from gasbench.teachers.classifier import real_images

        images, description = real_images(self.name), f"{self.name} real images (see gasbench.teachers.classifier.real_images)"
        return (images + 1) / 2, description


def _register_builtin(name: str, class_name: str, shape: tuple[int, int, int], sha256: str, description: str) -> type:
    weights = WeightsDeclaration(shipped=WEIGHTS_DIR / f"{name}.safetensors", pin=sha256,
                                 note=f"ships with gasbench (`gasbench teacher train {name}`)")
    cls = type(class_name, (BuiltinTeacher,), {"name": name, "shape": shape, "weights": weights, "__module__": __name__,
                                               "__doc__": f"The built-in {name} teacher."})
    return register_teacher(name, description=description)(cls)


# the built-in teachers: name -> (class name, sample shape, sha256 of the committed weights, description)
BUILTIN_TEACHERS = {
    "digits": ("DigitsTeacher", (1, 8, 8), "1f899fa72c2f9e66e02dc5dc65af2932bdbf2092a60b23d86cae6a5813df9022",
               "EDM UNet trained by gasbench on sklearn 8x8 digits, class-conditional (CPU default)"),
    "fashion": ("FashionTeacher", (1, 28, 28), "9bb4627ecd05d6ecf098efc2d6fc0d09a013486fab065b430ae8eb337b522d59",
                "EDM UNet trained by gasbench on Fashion-MNIST 28x28, class-conditional"),
}
DigitsTeacher, FashionTeacher = (_register_builtin(name, *spec) for name, spec in BUILTIN_TEACHERS.items())
