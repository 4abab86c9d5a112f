"""Small CNN classifiers of the built-in teachers' datasets, whose features give the domain FD.

Inception-v3 features of 8x8 or 28x28 greyscale images say little about them (the FID network
was trained on 299x299 ImageNet photographs), so for the built-in teachers gasbench trains a
classifier on the same data and uses its penultimate activations as the feature space of the
Frechet distance (``fd``) and of precision / recall / density / coverage. This is the recipe of
the "FD with a domain network" used for small datasets, e.g. the LeNet features of MNIST FID.

Weights are committed under ``teachers/weights/<name>-classifier.safetensors`` with their sha256
pinned below; ``gasbench teacher train-classifier NAME`` reproduces them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from gasbench.core.records import write_atomic
from gasbench.core.weights import verify_weights

from .datasets import load_digits_tensor, load_fashion_tensor
from .training import training_progress_bar

WEIGHTS_DIR = Path(__file__).parent / "weights"
METADATA_KEY = "gasbench"
FILE_FORMAT = "gasbench.domain_classifier.v1"
CLASSIFIER_SHA256 = {
    "digits": "c3fcbbc1509a43361eff18d71e38854115d7c09491698db547689aee8953826f",
    "fashion": "d99e97c4c2b86454f1acb704457138ff57f10fda73935a56322fdcce57934799",
}


@dataclass(frozen=True)
class ClassifierConfig:
    """Two conv blocks (conv-conv-pool) and a ``feature_dim`` hidden layer before the logits."""

    img_resolution: int
    width: int = 32
    feature_dim: int = 128
    num_classes: int = 10


class DomainClassifier(nn.Module):
    """A VGG-style CNN (Simonyan & Zisserman, 2015) small enough for 8x8 and 28x28 greyscale images.

    conv3-ReLU-conv3-ReLU-maxpool twice (``width`` then ``2 * width`` channels), a ReLU hidden layer
    of ``feature_dim`` units (the features of the domain FD) and a linear layer to the logits.
    ``img_resolution`` must be a multiple of 4.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        self.trunk = nn.Sequential(block(1, w), block(w, 2 * w), nn.Flatten())
        side = config.img_resolution // 4
        self.hidden = nn.Linear(2 * w * side * side, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim) of images (N, 1, H, W) in [-1, 1]."""
        return F.relu(self.hidden(self.trunk(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the committed classifier of one dataset was trained (Adam, cosine-decayed learning rate)."""

    config: ClassifierConfig
    epochs: int
    batch_size: int
    lr: float
    load_split: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    description: str


DIGITS_TRAIN_COUNT = 1397  # the remaining 400 of the 1,797 digits are the test split


def _digits_split():
    """(train images, train labels, test images, test labels) of the fixed 1,397 / 400 split."""
    images, labels = load_digits_tensor()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = order[:DIGITS_TRAIN_COUNT], order[DIGITS_TRAIN_COUNT:]
    return images[train], labels[train], images[test], labels[test]


def _fashion_split():
    """Fashion-MNIST's own split: 60,000 train, 10,000 test images."""
    return (*load_fashion_tensor("train"), *load_fashion_tensor("test"))


CLASSIFIER_RECIPES = {
    "digits": ClassifierRecipe(ClassifierConfig(img_resolution=8), epochs=30, batch_size=64, lr=2e-3,
                               load_split=_digits_split,
                               description="sklearn digits: train on 1,397 (seeded permutation 0), test on the other 400"),
    "fashion": ClassifierRecipe(ClassifierConfig(img_resolution=28), epochs=2, batch_size=128, lr=2e-3,
                                load_split=_fashion_split,
                                description="Fashion-MNIST: train on the 60,000 train images, test on the 10,000 test images"),
}


def weights_path(name: str) -> Path:
    """Where the committed weights of ``name`` live (tests monkeypatch this)."""
    return WEIGHTS_DIR / f"{name}-classifier.safetensors"


def _shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel (zero-padded with the background value -1)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]


@torch.no_grad()
def accuracy(classifier: DomainClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` whose arg-max logit is their label."""
    predictions = torch.cat([classifier(chunk).argmax(1) for chunk in images.split(1000)])
    return float((predictions == labels).double().mean())


def train_classifier(name: str, out_path: Union[str, Path], seed: int = 0, progress: bool = True,
                     epochs: Optional[int] = None, max_steps: Optional[int] = None) -> dict[str, Any]:
    """Train the classifier of dataset ``name`` with Adam and cross-entropy, save it, return its metadata.

    Batches, shifts and the initialisation come from ``seed`` alone (a torch.Generator, and the
    global RNG inside ``fork_rng``), so with the same torch build and thread count a rerun writes
    the same bytes. ``max_steps`` stops early (for tests); the schedule still spans ``epochs``.
    """
    recipe = CLASSIFIER_RECIPES[name]
    epochs = recipe.epochs if epochs is None else epochs
    train_x, train_y, test_x, test_y = recipe.load_split()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainClassifier(recipe.config)
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    steps_per_epoch = -(-len(train_x) // recipe.batch_size)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    with training_progress_bar(f"{name} classifier", progress) as bar:
        task = bar.add_task("train", total=total_steps, loss=float("nan"))
        for epoch in range(epochs):
            # cosine decay to zero: a short run still ends at a settled point
            order = torch.randperm(len(train_x), generator=generator)
            for step, index in enumerate(order.split(recipe.batch_size)):
                if epoch * steps_per_epoch + step >= total_steps:
                    break
                progress_fraction = (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * 0.5 * (1 + np.cos(np.pi * progress_fraction))
                loss = F.cross_entropy(net(_shifted(train_x[index], generator)), train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(task, advance=1, loss=loss.item())
    net.eval().requires_grad_(False)
    metadata = {
        "format": FILE_FORMAT,
        "dataset": recipe.description,
        "config": asdict(recipe.config),
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": round(accuracy(net, test_x, test_y), 6),
        "test_images": len(test_x),
        "torch_version": torch.__version__,
    }
    if max_steps is not None:  # only truncated runs say so: the committed files have no such field
        metadata["max_steps"] = max_steps
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    write_atomic(Path(out_path), save(tensors, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)}))
    return metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata written by :func:`train_classifier`; all fields sit, as one sorted JSON object,
    under one key, so that the same weights give the same bytes (as in ``networks.save_network``)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
    if metadata.get("format") != FILE_FORMAT:
        raise ValueError(f"{path} is not a {FILE_FORMAT} file")
    return metadata


def _verified_path(name: str) -> Path:
    if name not in CLASSIFIER_RECIPES:
        raise KeyError(f"no domain classifier for '{name}'; built: {', '.join(CLASSIFIER_RECIPES)}")
    path = weights_path(name)
    rebuild = f"Reinstall gasbench or rebuild it with `gasbench teacher train-classifier {name} --out {path}`."
    return verify_weights(path, CLASSIFIER_SHA256[name], rebuild)


def load_classifier(name: str) -> DomainClassifier:
    """The committed classifier of ``name`` (sha256 verified), in eval mode with frozen weights."""
    path = _verified_path(name)
    net = DomainClassifier(ClassifierConfig(**read_metadata(path)["config"]))
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


def classifier_provenance(name: str) -> dict[str, Any]:
    """What a record keeps about the feature network of the domain FD."""
    path = _verified_path(name)
    metadata = read_metadata(path)
    return {
        "network": f"gasbench-{name}-classifier",
        "sha256": CLASSIFIER_SHA256[name],
        "test_accuracy": metadata["test_accuracy"],
        "feature_dim": metadata["config"]["feature_dim"],
        "features": "penultimate ReLU layer",
    }


def real_images(name: str) -> torch.Tensor:
    """The real images in [-1, 1] whose features are the FD reference: all 1,797 digits, or the
    60,000 Fashion-MNIST training images."""
    if name == "digits":
        return load_digits_tensor()[0]
    if name == "fashion":
        return load_fashion_tensor("train")[0]
    raise KeyError(f"no real images for '{name}'")


@torch.no_grad()
def domain_features(images: torch.Tensor, classifier: DomainClassifier, batch_size: int = 1000) -> np.ndarray:
    """Features (N, feature_dim) float64 of images (N, 1, H, W) in [-1, 1]."""
    chunks = [classifier.features(chunk.float()) for chunk in images.split(batch_size)]
    return torch.cat(chunks).double().numpy()
