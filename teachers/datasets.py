"""Small image datasets that ship with the Python environment (no downloads)."""

from __future__ import annotations

import torch

DIGITS_MAX_INTENSITY = 16.0


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits as tensors ready for diffusion training.

    Returns ``(images, labels)``: images float32 of shape (1797, 1, 8, 8) mapped linearly from the
    dataset's 0..16 intensity range to [-1, 1], labels int64 of shape (1797,) with values 0..9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32)
    images = (pixels / DIGITS_MAX_INTENSITY * 2.0 - 1.0).unsqueeze(1)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images, labels
