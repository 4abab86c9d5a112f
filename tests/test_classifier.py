"""The domain classifiers behind the FD of the built-in teachers: pinned, accurate, deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from gasbench.core.errors import GasbenchError
from gasbench.teachers import classifier
from gasbench.teachers.datasets import fashion_dir, load_digits_tensor


def _needs_fashion():
    if not (fashion_dir() / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {fashion_dir()} (apt-get install dataset-fashion-mnist)")


def _nearest_class_mean_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    means = np.stack([features[labels == k].mean(0) for k in range(10)])
    nearest = ((features[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((nearest == labels).mean())


def test_digits_classifier_accuracy_matches_its_metadata():
    net = classifier.load_classifier("digits")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    _, _, test_x, test_y = classifier._digits_split()
    measured = classifier.accuracy(net, test_x, test_y)
    provenance = classifier.classifier_provenance("digits")
    assert measured == pytest.approx(provenance["test_accuracy"], abs=1e-6)
    assert measured >= 0.95 and len(test_x) == 400
    assert provenance["sha256"] == classifier.CLASSIFIER_SHA256["digits"]
    assert provenance["network"] == "gasbench-digits-classifier" and provenance["feature_dim"] == 128
    json.dumps(provenance)  # goes into records as is


def test_fashion_classifier_accuracy_and_features():
    _needs_fashion()
    from gasbench.teachers.datasets import load_fashion_tensor

    images, labels = load_fashion_tensor("test")
    images, labels = images[:2000], labels[:2000]
    net = classifier.load_classifier("fashion")
    assert classifier.accuracy(net, images, labels) >= 0.85
    features = classifier.domain_features(images, net)
    assert features.shape == (2000, 128) and features.dtype == np.float64
    assert _nearest_class_mean_accuracy(features, labels.numpy()) > 0.75
    assert classifier.classifier_provenance("fashion")["test_accuracy"] >= 0.90


def test_corrupt_classifier_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "digits-classifier.safetensors"
    bad.write_bytes(classifier.weights_path("digits").read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(classifier, "weights_path", lambda name: bad)
    with pytest.raises(GasbenchError, match="corrupt or not the pinned one"):
        classifier.load_classifier("digits")
    with pytest.raises(GasbenchError, match="does not exist"):
        bad.unlink()
        classifier.classifier_provenance("digits")


def test_unknown_dataset_is_refused():
    with pytest.raises(KeyError, match="no domain classifier"):
        classifier.load_classifier("cifar10")


def test_features_are_deterministic_and_separate_classes():
    net = classifier.load_classifier("digits")
    images = classifier.real_images("digits")
    _, labels = load_digits_tensor()
    assert images.shape == (1797, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    features = classifier.domain_features(images, net, batch_size=500)
    assert features.shape == (1797, 128) and features.dtype == np.float64
    np.testing.assert_array_equal(features, classifier.domain_features(images, net))
    assert _nearest_class_mean_accuracy(features, labels.numpy()) > 0.95


def test_short_retraining_is_deterministic(tmp_path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    runs = [classifier.train_classifier("digits", path, epochs=2, max_steps=4, progress=False) for path in paths]
    assert runs[0] == runs[1] and runs[0]["max_steps"] == 4
    first, second = (load_file(str(path)) for path in paths)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].equal(second[key]), key
    assert paths[0].read_bytes() == paths[1].read_bytes()
