"""Small image datasets for the built-in teachers, read from local packages (no downloads needed).

* digits: scikit-learn's ``load_digits`` (ships inside the scikit-learn wheel).
* fashion: Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017) from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``), each file checked against
  its pinned sha256. Elsewhere ``download=True`` fetches the same files through torchvision.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.weights import sha256_of

DIGITS_MAX_INTENSITY = 16.0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the gzip files; identical in the Debian package and the zalandoresearch release
FASHION_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_HEADER_BYTES = {"images": 16, "labels": 8}


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


def fashion_dir() -> Path:
    """``$GASBENCH_FASHION_MNIST`` if set, else the Debian package's directory."""
    return Path(os.environ.get("GASBENCH_FASHION_MNIST", FASHION_DIR))


def _download_fashion(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def _read_idx(path: Path, kind: str, expected_sha256: str) -> np.ndarray:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise GasbenchError(
            f"{path} has sha256 {actual}, expected {expected_sha256}; the file is corrupt or not "
            "Fashion-MNIST. Reinstall the Debian package dataset-fashion-mnist."
        )
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=IDX_HEADER_BYTES[kind])


def load_fashion_tensor(split: str = "train", download: bool = False, root: Optional[Path] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000) as tensors.

    Returns images float32 (N, 1, 28, 28) mapped from 0..255 to [-1, 1] and labels int64 0..9.
    Raises GasbenchError naming the install command when the files are missing.
    """
    directory = Path(root) if root is not None else fashion_dir()
    if not (directory / FASHION_FILES[(split, "images")][0]).exists():
        if not download:
            raise GasbenchError(
                f"Fashion-MNIST not found in {directory}. Install it with "
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set "
                "GASBENCH_FASHION_MNIST to a folder holding the four *-ubyte.gz files."
            )
        directory = _download_fashion(directory)
    image_file, image_sha = FASHION_FILES[(split, "images")]
    label_file, label_sha = FASHION_FILES[(split, "labels")]
    pixels = _read_idx(directory / image_file, "images", image_sha).reshape(-1, 1, 28, 28)
    labels = _read_idx(directory / label_file, "labels", label_sha)
    images = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)
    return images, torch.from_numpy(labels.astype(np.int64))
