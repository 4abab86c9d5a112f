"""Weights resolution (--weights, the cache directory, verified downloads, one-time conversion),
building teachers from what the user typed, device/precision options and `gasbench teachers`."""

import hashlib

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.weights import WeightsSource, converted_weights, resolve_weights, weights_dir

from helpers import gasbench


def _source(payload: bytes, url=None, pinned=True) -> WeightsSource:
    return WeightsSource("a test network", "net.pkl", url, hashlib.sha256(payload).hexdigest() if pinned else None)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("GASBENCH_OFFLINE", "1")


def test_missing_weights_message_names_file_hash_source_and_flag(offline):
    source = WeightsSource("EDM weights", "edm.pkl", "https://example.org/edm.pkl", "ab" * 32)
    with pytest.raises(GasbenchError) as info:
        resolve_weights(source, "cifar10")
    message = str(info.value)
    for part in ("edm.pkl", "ab" * 32, "https://example.org/edm.pkl", "--weights", str(weights_dir())):
        assert part in message


def test_cached_file_must_match_the_pin(offline):
    source = _source(b"the real bytes")
    weights_dir().mkdir(parents=True, exist_ok=True)
    (weights_dir() / "net.pkl").write_bytes(b"the real bytes")
    path, sha = resolve_weights(source, "t")
    assert path == weights_dir() / "net.pkl" and sha == source.sha256
    (weights_dir() / "net.pkl").write_bytes(b"tampered")
    with pytest.raises(GasbenchError, match="corrupt or not the official"):
        resolve_weights(source, "t")
    (weights_dir() / "net.pkl").unlink()


def test_user_weights_are_accepted_with_their_own_hash_and_a_warning(tmp_path, offline):
    own = tmp_path / "mine.pkl"
    own.write_bytes(b"my own network")
    with pytest.warns(UserWarning, match="not the pinned"):
        path, sha = resolve_weights(_source(b"official"), "t", own)
    assert path == own and sha == hashlib.sha256(b"my own network").hexdigest()
    with pytest.raises(GasbenchError, match="does not exist"):
        resolve_weights(_source(b"official"), "t", tmp_path / "absent.pkl")


def test_download_is_verified_before_it_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("GASBENCH_OFFLINE", raising=False)
    served = tmp_path / "served.pkl"
    served.write_bytes(b"x" * 3_000_000)
    url = served.as_uri()  # urllib reads file:// like http(s)://, through the same code path
    wrong = WeightsSource("net", "dl.pkl", url, "00" * 32)
    with pytest.raises(GasbenchError, match="download failed.*not the pinned"):
        resolve_weights(wrong, "t")
    assert not any(weights_dir().glob("dl.pkl*"))  # no partial or unverified file left behind
    right = WeightsSource("net", "dl.pkl", url, hashlib.sha256(served.read_bytes()).hexdigest())
    path, sha = resolve_weights(right, "t")
    assert path.read_bytes() == served.read_bytes() and sha == right.sha256
    (weights_dir() / "dl.pkl").unlink()


def test_conversion_runs_once_and_later_loads_read_safetensors(tmp_path):
    original = tmp_path / "net.bin"
    original.write_bytes(b"anything")
    calls = []

    def convert(path):
        calls.append(path)
        return {"w": torch.arange(6.0).reshape(2, 3)}, {"arch": {"channels": 3}}

    first = converted_weights(original, "cd" * 32, "test", convert)
    original.unlink()  # the second load must not need the original
    second = converted_weights(original, "cd" * 32, "test", convert)
    assert len(calls) == 1
    assert torch.equal(first[0]["w"], second[0]["w"]) and second[1] == {"arch": {"channels": 3}}


def test_load_teacher_options():
    from gasbench.teachers.load import load_teacher

    with pytest.raises(GasbenchError, match="Did you mean: digits"):
        load_teacher("digit")
    with pytest.raises(GasbenchError, match="--precision"):
        load_teacher("digits", precision="fp8")
    with pytest.raises(GasbenchError, match="--device"):
        load_teacher("digits", device="tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(GasbenchError, match="sees none"):
            load_teacher("digits", device="cuda")
    assert load_teacher("digits", device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bf16_autocast_changes_the_network_precision_only():
    from gasbench.core.seeds import noise_and_conditions
    from gasbench.teachers.load import load_teacher

    fp32, bf16 = load_teacher("digits", device="cpu"), load_teacher("digits", device="cpu", precision="bf16")
    noise, cond = noise_and_conditions(fp32, list(range(8)))
    x, sigma = noise * 2.0, torch.tensor(2.0)
    exact, mixed = fp32.denoiser(cond)(x, sigma), bf16.denoiser(cond)(x, sigma)
    assert mixed.dtype == x.dtype  # the solver keeps its own dtype
    difference = (exact - mixed).abs().max().item()
    assert 0 < difference < 0.1  # bf16 has 8 mantissa bits: visibly different, still the same network


def test_batch_size_option(tmp_path, monkeypatch, capsys):
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "2", "-n", "4",
                            "--batch-size", "auto", "--results-dir", tmp_path / "r")
    assert code == 0 and "batch size 256" in err
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--batch-size", "0",
                            "--results-dir", tmp_path / "r")
    assert code != 0 and "--batch-size expects a positive integer or 'auto'" in err and "Traceback" not in err


def test_teachers_command_lists_weights_and_where_they_are_looked_for(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = gasbench(monkeypatch, capsys, "teachers", "--check")
    assert code == 0
    assert "digits" in out and "sha256 matches" in out and str(weights_dir()) in out
    assert "diffusers:<hub id or folder>" in out


def test_reference_images_from_a_folder_a_zip_and_an_npz(tmp_path):
    import zipfile

    import numpy as np
    from PIL import Image

    from gasbench.core.images import read_image_set

    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
            archive.write(folder / f"{i:05d}.png", f"00000/img{i:08d}.png")
    np.savez(tmp_path / "images.npz", pixels.transpose(0, 3, 1, 2))  # NCHW is accepted too
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    for source in (folder, tmp_path / "images.zip", tmp_path / "images.npz"):
        images, description = read_image_set(source)
        assert torch.equal(images, expected) and description.startswith("5 images from")
    assert read_image_set(folder, limit=2)[0].shape == (2, 3, 6, 6)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    for bad, message in ((tmp_path / "bad.zip", "could not be read"), (tmp_path / "x.txt", "expected a folder"),
                         (tmp_path / "empty", "holds no images")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(GasbenchError, match=message):
            read_image_set(bad)


def test_a_teacher_without_data_asks_for_reference_images(tmp_path):
    from gasbench.features import feature_space
    from gasbench.teachers.base import Teacher
    from gasbench.teachers.builtin import DigitsTeacher

    class NoData(DigitsTeacher):
        name = "nodata"

        def real_images(self):
            return Teacher.real_images(self)  # the base behaviour: the user's set or nothing

    teacher = NoData()
    with pytest.raises(GasbenchError, match="--reference-images PATH"):
        feature_space("pixels").reference(teacher)


def test_run_on_a_papers_teacher_without_weights_stops_at_once(tmp_path, monkeypatch, capsys, offline):
    code, out, err = gasbench(monkeypatch, capsys, "run", "--methods", "gas,s4s", "--dataset", "afhqv2",
                              "--results-dir", tmp_path / "results")
    assert code != 0 and "Traceback" not in out + err
    message = " ".join(err.split())  # rich wraps long lines
    for part in ("edm-afhqv2-64x64-uncond-vp.pkl", "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-afhqv2-64x64-uncond-vp.pkl",
                 "--weights PATH", "GASBENCH_HOME"):
        assert part in message
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
