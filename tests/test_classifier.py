"""The domain classifiers behind the FD of the built-in teachers: pinned, accurate, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from gasbench.errors import GasbenchError
from gasbench.teachers import classifier
from gasbench.teachers.datasets import fashion_dir


def _needs_fashion():
    if not (fashion_dir() / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {fashion_dir()} (apt-get install dataset-fashion-mnist)")


def test_digits_classifier_accuracy_matches_its_metadata():
    net = classifier.load_classifier("digits")
    _, _, test_x, test_y = classifier._digits_split()
    measured = classifier.accuracy(net, test_x, test_y)
    provenance = classifier.classifier_provenance("digits")
    assert measured == pytest.approx(provenance["test_accuracy"], abs=1e-6)
    assert measured >= 0.95 and len(test_x) == 400


def test_fashion_classifier_accuracy():
    _needs_fashion()
    from gasbench.teachers.datasets import load_fashion_tensor

    images, labels = load_fashion_tensor("test")
    assert classifier.accuracy(classifier.load_classifier("fashion"), images[:2000], labels[:2000]) >= 0.85


def test_corrupt_classifier_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "digits-classifier.safetensors"
    bad.write_bytes(classifier.weights_path("digits").read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(classifier, "weights_path", lambda name: bad)
    with pytest.raises(GasbenchError, match="corrupt or not the pinned one"):
        classifier.load_classifier("digits")


def test_features_are_deterministic_and_separate_classes():
    net = classifier.load_classifier("digits")
    images = classifier.real_images("digits")
    from gasbench.teachers.datasets import load_digits_tensor

    _, labels = load_digits_tensor()
    features = classifier.domain_features(images, net, batch_size=500)
    assert features.shape == (1797, 128) and features.dtype == np.float64
    np.testing.assert_array_equal(features, classifier.domain_features(images, net))
    means = np.stack([features[labels.numpy() == k].mean(0) for k in range(10)])
    nearest = ((features[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == labels.numpy()).mean() > 0.95


def test_short_retraining_is_deterministic(tmp_path):
    first = classifier.train_classifier("digits", tmp_path / "a.safetensors", epochs=1, progress=False)
    second = classifier.train_classifier("digits", tmp_path / "b.safetensors", epochs=1, progress=False)
    assert first == second
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
