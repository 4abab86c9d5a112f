"""The built-in CPU teacher: an EDM-preconditioned UNet trained by this project on 8x8 digits.

Class-conditional over the 10 digits of scikit-learn's ``load_digits`` (1,797 images scaled to
[-1, 1]); each evaluation seed draws its class uniformly at random. The committed weights are
reproduced by ``gasbench teacher train digits`` (see :func:`gasbench.teachers.training.train_digits_teacher`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from gasbench.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, Teacher
from gasbench.weights import verify_weights

WEIGHTS = Path(__file__).parent / "weights" / "digits.safetensors"
WEIGHTS_SHA256 = "1f899fa72c2f9e66e02dc5dc65af2932bdbf2092a60b23d86cae6a5813df9022"


class NetworkTeacher(Teacher):
    """A teacher backed by an EDM-preconditioned network ``net(x, sigma, class_labels)``."""

    def __init__(self, net: torch.nn.Module, weights_sha256: Optional[str] = None):
        self.net = net.eval().requires_grad_(False)
        self.weights_sha256 = weights_sha256

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        # sigma is rounded to float32, the precision the network was trained at
        return self.net(x, torch.as_tensor(sigma, dtype=torch.float32), cond)


@register_teacher("digits", description="EDM UNet trained by gasbench on sklearn 8x8 digits, class-conditional (CPU default)")
class DigitsTeacher(NetworkTeacher):
    name = "digits"
    shape = (1, 8, 8)
    num_classes = 10
    # UniPC-3 on logSNR as in GAS Table 17; NFE 50 because at NFE 20 its RMSE to a 200-step
    # DPM-Solver++(3M) solution (0.010) is a quarter of the NFE-10 methods' error, at 50 it is 0.0009.
    reference = ReferenceSolver("unipc", 50, "logsnr", {"order": 3})

    def __init__(self, weights: Optional[Path] = None):
        from gasbench.teachers.networks import load_network

        path = Path(weights) if weights is not None else WEIGHTS
        expected = WEIGHTS_SHA256 if weights is None else None
        if expected is not None:
            verify_weights(
                path,
                expected,
                "Reinstall gasbench or run `gasbench teacher train digits` to rebuild the file.",
            )
        super().__init__(load_network(path), expected)
