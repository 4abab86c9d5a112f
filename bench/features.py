"""Feature spaces for distribution metrics, and the real-image reference features they compare with.

A feature space maps decoded images in [0, 1] to vectors:

* ``inception``: the FID Inception-v3 pool features with clean-fid's "clean" resize (FID).
* ``classifier``: the penultimate layer of the small classifier the project trained on a built-in
  teacher's dataset, the space of the domain Frechet distance (FD), because Inception features of
  8x8 or 28x28 greyscale images say little about them.
* ``pixels``: the decoded pixels, the domain space of the analytic ``gmm`` teacher.

The real images' features are computed once per (teacher, space, real set, network) and cached as
``$GASBENCH_HOME/reference_features/<teacher>/<space>-<key>.npz`` (written atomically, read
without pickle). Every record names the network, its sha256 and the real set that was used.
Under torchrun the extraction is split over the processes (:meth:`FeatureSpace.extract_all`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from gasbench.core import distributed
from gasbench.core.errors import GasbenchError
from gasbench.core.records import write_atomic
from gasbench.core.weights import gasbench_home, real_images_dir

# clean-fid uses a dataset's full training set; Inception runs at a few images per second on a
# CPU, so built-in teachers' FID reference uses at most this many real images (recorded).
FID_REFERENCE_IMAGES = int(os.environ.get("GASBENCH_FID_REFERENCE_IMAGES", 2000))


class FeatureSpace(ABC):
    name: str
    max_reference_images: int | None = None
    batch_size: int = 1  # images per network call in :meth:`extract`

    @abstractmethod
    def extract(self, images: torch.Tensor, teacher) -> np.ndarray:
        """Features (N, D) float64 of decoded images (N, C, H, W) in [0, 1], in batches of ``batch_size``."""

    def extract_all(self, images: torch.Tensor, teacher) -> np.ndarray:
        """:meth:`extract`, split in a distributed run: each process extracts a contiguous block of
        whole batches and the blocks are gathered in order on every process, so each image goes
        through the network in the same batch as in one process and the features are bit-identical."""
        batches = distributed.shard(range(-(-len(images) // self.batch_size)))
        mine = images[batches.start * self.batch_size : batches.stop * self.batch_size]
        return distributed.gather(torch.from_numpy(self.extract(mine, teacher))).numpy()

    @abstractmethod
    def network(self, teacher) -> dict[str, Any]:
        """Name and sha256 of the feature network, for records and the cache key."""

    def reference(self, teacher) -> tuple[np.ndarray, dict[str, Any]]:
        """Features of the teacher's real images, and their provenance; computed once, then cached."""
        images, description = _real_images(teacher)
        # the papers' teachers use the whole real set, as the FID protocol asks; the CPU teachers a subset
        if self.max_reference_images is not None and not teacher.protocol.full_reference_set:
            images = images[: self.max_reference_images]
        with distributed.main_first():  # a network to download is fetched once
            network = self.network(teacher)
        provenance = {
            "space": self.name,
            **network,
            "reference": {"images": description, "count": int(images.shape[0]), "sha256": _tensor_sha256(images)},
        }
        key = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:16]
        path = gasbench_home() / "reference_features" / teacher.name / f"{self.name}-{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    return data["features"], provenance
            except (OSError, ValueError, KeyError) as exc:
                raise GasbenchError(f"cached reference features {path} are unreadable ({exc}); delete the file and rerun.") from None
        features = self.extract_all(images, teacher)
        buffer = io.BytesIO()
        np.savez(buffer, features=features)
        # every process finds the file from now on, so they all skip this extraction together
        distributed.on_main(lambda: write_atomic(path, buffer.getvalue()))
        return features, provenance


def _tensor_sha256(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _real_images(teacher) -> tuple[torch.Tensor, str]:
    real = teacher.real_images()
    if real is None:
        raise GasbenchError(
            f"teacher '{teacher.name}' has no real reference images, so distribution metrics (fid, fd, "
            "precision, recall, density, coverage) are undefined for it: pass the dataset's images with "
            "`--reference-images PATH` (a folder, .zip or .npz of images, e.g. the training set the teacher was "
            f"trained on){_default_location(teacher)}, or choose paired metrics such as `--metrics rmse,psnr`."
        )
    return real


def _default_location(teacher) -> str:
    if not teacher.protocol.real_images:
        return ""
    return f" or put them at {real_images_dir() / teacher.protocol.real_images} (gasbench cannot download them)"


class InceptionSpace(FeatureSpace):
    name = "inception"
    max_reference_images = FID_REFERENCE_IMAGES
    batch_size = 32

    def extract(self, images: torch.Tensor, teacher) -> np.ndarray:
        from gasbench import fid

        return fid.fid_features(images, _fid_network(), self.batch_size).astype(np.float64)

    def network(self, teacher) -> dict[str, Any]:
        return {**_fid_network().record(), "resize": "clean-fid clean (PIL bicubic to 299)"}


@lru_cache(maxsize=1)
def _fid_network():
    from gasbench import fid

    return fid.resolve_fid_inception()


class ClassifierSpace(FeatureSpace):
    """Penultimate features of the classifier gasbench trained on a built-in teacher's data."""

    name = "classifier"
    batch_size = 1000

    def extract(self, images: torch.Tensor, teacher) -> np.ndarray:
        from gasbench.teachers import classifier

        return classifier.domain_features(images * 2 - 1, _classifier(teacher.name), self.batch_size)

    def network(self, teacher) -> dict[str, Any]:
        from gasbench.teachers import classifier

        return classifier.classifier_provenance(teacher.name)


@lru_cache(maxsize=4)
def _classifier(name: str):
    from gasbench.teachers import classifier

    return classifier.load_classifier(name)


class PixelSpace(FeatureSpace):
    """The decoded pixels themselves: meaningful for low-dimensional analytic teachers (gmm)."""

    name = "pixels"

    def extract(self, images: torch.Tensor, teacher) -> np.ndarray:
        return images.detach().flatten(1).double().numpy()

    def network(self, teacher) -> dict[str, Any]:
        return {"network": "identity (decoded pixels)", "sha256": None}


def domain_space(teacher) -> str:
    """The feature space of the teacher's domain FD."""
    if teacher.domain_space is None:
        raise GasbenchError(
            f"teacher '{teacher.name}' has no domain feature space (the built-in digits and fashion "
            "teachers have their classifiers, gmm its pixels), so the domain FD is undefined for it; use fid instead."
        )
    return teacher.domain_space


FEATURE_SPACES: dict[str, FeatureSpace] = {space.name: space for space in (InceptionSpace(), ClassifierSpace(), PixelSpace())}


def feature_space(name: str) -> FeatureSpace:
    try:
        return FEATURE_SPACES[name]
    except KeyError:
        raise GasbenchError(f"unknown feature space '{name}'; choose one of {', '.join(FEATURE_SPACES)}.") from None
