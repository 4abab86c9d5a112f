"""EDM release teachers: pickles written in the release's format (torch_utils.persistence records
carrying their module source) load into gasbench's own modules without running anything, give
the original network's outputs, are converted once to safetensors; pickles that carry code are
refused or read inertly, and their payload never runs."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

from gasbench.core import safe_pickle
from gasbench.core.errors import GasbenchError
from gasbench.core.registry import TEACHERS
from gasbench.teachers import edm_networks, edm_pickle
from helpers import EDM_NETWORKS, Payload, Persistent, release_modules, tiny_edm, write_release

# D(x, sigma) of tiny networks built by NVlabs/edm's own training/networks.py (commit 008a4e5), with
# every tensor but the resample filters, then the input, drawn as in the test below (computed once
# offline; EDM's code is not part of gasbench): every 48th output value, and the mean |D|
PINNED = {
    "EDMPrecond": (dict(augment_dim=9, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                        channel_mult_noise=1, resample_filter=[1, 1]),
                   [-1.059999, -0.793472, -1.281949, 0.396711, 0.074492, 0.124338, -0.102448, -0.317699], 0.580158),
    "VPPrecond": (dict(), [-0.345682, 0.045493, -0.621791, -1.046859, -1.917006, -1.694274, 2.097256, 3.08728],
                  1.546414),
    "VEPrecond": (dict(embedding_type="fourier", encoder_type="residual", decoder_type="skip", channel_mult_noise=2,
                       resample_filter=[1, 3, 3, 1]),
                  [0.584624, 0.648813, -2.047917, 0.084947, 1.017518, 0.75243, -0.497698, -0.889131], 0.980774),
}


@pytest.mark.parametrize("class_name", list(PINNED))
def test_outputs_match_values_pinned_from_edms_own_networks(class_name):
    options, values, mean_abs = PINNED[class_name]
    net = edm_networks.PRECONDS[class_name](img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 2],
                                   num_blocks=1, attn_resolutions=[4], model_type="SongUNet", **options).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in sorted(net.state_dict().items()):
            if not key.endswith("resample_filter"):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
        out = net(torch.randn(2, 3, 8, 8, generator=generator), torch.tensor([0.05, 3.0]))
    torch.testing.assert_close(out.flatten()[::48], torch.tensor(values), rtol=1e-4, atol=2e-5)
    assert out.abs().mean().item() == pytest.approx(mean_abs, rel=1e-4)


def as_teacher(name: str, path):
    with pytest.warns(UserWarning, match="not the pinned"):
        return TEACHERS.get(name)(weights=path)


@pytest.mark.parametrize("kind", list(EDM_NETWORKS))
def test_release_pickle_gives_the_original_network_and_is_converted_once(kind, recording, tmp_path,
                                                                         monkeypatch):
    original = tiny_edm(kind)
    path = write_release(original, tmp_path / "edm-cifar10-32x32-uncond-vp.pkl")
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    teacher = as_teacher("cifar10", path)
    assert type(teacher.net).__name__ == EDM_NETWORKS[kind][0] and teacher.weights_sha256 is not None

    x = torch.randn(3, 3, 32, 32, dtype=torch.float64) * 2
    sigma = torch.tensor([0.002, 1.0, 80.0])
    with torch.no_grad():
        expected = original(x, sigma)
    denoised = teacher.denoise(x, sigma, None)
    assert denoised.dtype == torch.float64
    torch.testing.assert_close(denoised, expected.double(), rtol=0, atol=1e-6)
    scalar = teacher.denoise(x, torch.tensor(1.0), None)  # one sigma for the batch
    torch.testing.assert_close(scalar[1], expected[1].double(), rtol=0, atol=1e-6)
    with_features, features = teacher.denoise_with_features(x, sigma, None)
    torch.testing.assert_close(with_features, denoised, rtol=0, atol=0)
    assert features.shape == (3, teacher.feature_dim) == (3, 32) and torch.isfinite(features).all()

    # later loads read only the converted safetensors, never the pickle
    monkeypatch.setattr(safe_pickle, "load_network_pickle", lambda *a, **k: pytest.fail("the pickle was read again"))
    torch.testing.assert_close(as_teacher("cifar10", path).denoise(x, sigma, None), denoised, rtol=0, atol=0)
    sha256 = teacher.weights_sha256
    path.unlink()
    net, info = edm_pickle.load_edm_pickle(path, sha256)
    assert info["class_name"] == EDM_NETWORKS[kind][0] and info["ignored_kwargs"] == {"use_fp16": False}
    with torch.no_grad():
        torch.testing.assert_close(net(x, sigma), expected, rtol=0, atol=1e-6)


def test_embedded_source_never_runs_and_unknown_classes_are_refused(recording, tmp_path):
    marker = tmp_path / "source-ran"
    evil_source = f"open({str(marker)!r}, 'w').write('ran')"
    path = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "armed.pkl", module_src=evil_source)
    with release_modules():  # the file is armed: loading it as EDM does runs the source
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    net, _ = edm_pickle.load_edm_pickle(path)  # read inertly: the source is never looked at
    assert isinstance(net, edm_networks.EDMPrecond) and not marker.exists()

    stranger = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "stranger.pkl", module_src=evil_source,
                             extra={"extra": Persistent("Backdoor", {}, evil_source)})
    with pytest.raises(GasbenchError, match="class 'Backdoor'.*refusing"):
        edm_pickle.load_edm_pickle(stranger)
    renamed = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "renamed.pkl", rename={"UNetBlock": "DhariwalUNet"})
    with pytest.raises(GasbenchError, match="class 'DhariwalUNet'"):
        edm_pickle.load_edm_pickle(renamed)
    assert not marker.exists()


@pytest.mark.parametrize("call, refused", [("posix.system", "system'.*refusing"),
                                           ("builtins.exec", "builtins.exec'.*refusing")])
def test_code_payloads_are_refused_and_never_run(call, refused, recording, tmp_path):
    marker = tmp_path / "payload-ran"
    path = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "evil.pkl", extra={"payload": Payload(call, marker)})
    with pytest.raises(GasbenchError, match=refused):
        as_teacher("cifar10", path)
    assert not marker.exists()


def test_truncated_and_foreign_files_give_one_message(recording, tmp_path):
    path = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "whole.pkl")
    (tmp_path / "cut.pkl").write_bytes(path.read_bytes()[:3000])
    with pytest.raises(GasbenchError, match="not a readable network pickle"):
        edm_pickle.load_edm_pickle(tmp_path / "cut.pkl")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"G": None}))
    with pytest.raises(GasbenchError, match="no EDM network under 'ema'"):
        edm_pickle.load_edm_pickle(tmp_path / "other.pkl")
    small = write_release(tiny_edm("EDMPrecond-ddpmpp", resolution=16), tmp_path / "small.pkl")
    with pytest.raises(GasbenchError, match=r"\(3, 16, 16\) images; teacher 'cifar10' is unconditional at \(3, 32, 32\)"):
        as_teacher("cifar10", small)
    # a release whose layers differ from what its recorded arguments rebuild is not run
    other_eps = write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "eps.pkl", overrides={"GroupNorm": {"eps": 1e-5}})
    with pytest.raises(GasbenchError, match=r"model.enc.32x32_block0.norm0.eps is 1e-05 in the release but 1e-06"):
        edm_pickle.load_edm_pickle(other_eps)


def test_missing_weights_offline_name_the_file_url_and_flag(monkeypatch):
    monkeypatch.setenv("GASBENCH_OFFLINE", "1")
    with pytest.raises(GasbenchError) as error:
        TEACHERS.get("afhqv2")()
    message = str(error.value)
    for part in ("edm-afhqv2-64x64-uncond-vp.pkl",
                 "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-afhqv2-64x64-uncond-vp.pkl", "--weights"):
        assert part in message


def test_fid_reference_images_are_the_users_or_a_clear_message(recording, tmp_path, monkeypatch):
    from PIL import Image

    from gasbench.features import feature_space
    from gasbench.core.weights import real_images_dir

    teacher = as_teacher("cifar10", write_release(tiny_edm("EDMPrecond-ddpmpp"), tmp_path / "net.pkl"))
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path / "home"))
    assert teacher.real_images() is None
    with pytest.raises(GasbenchError, match="--reference-images PATH.*cifar10-32x32.zip.*--metrics rmse,psnr"):
        feature_space("inception").reference(teacher)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    real_images_dir().mkdir(parents=True)
    with zipfile.ZipFile(real_images_dir() / "cifar10-32x32.zip", "w") as archive:
        for i in (2, 0, 1):
            png = io.BytesIO()
            Image.fromarray(pixels[i]).save(png, format="PNG")
            archive.writestr(f"00000/img{i:08d}.png", png.getvalue())
        archive.writestr("dataset.json", "{}")
    images, description = teacher.real_images()
    assert images.shape == (3, 3, 32, 32) and description.startswith("3 images from")
    torch.testing.assert_close(images, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
