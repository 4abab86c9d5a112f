"""The teacher contract's parts: one weights declaration the CLI lists, the evaluation protocol
apart from the model (the runner evaluates under its own copy), and one EDM scaling."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import gasbench

from gasbench.core.registry import TEACHERS
from gasbench.teachers.base import Teacher, WeightsDeclaration, declared_weights
from gasbench.teachers.gmm import GaussianMixtureTeacher, gmm_teacher
from gasbench.teachers.protocol import EvaluationProtocol


def test_teachers_lists_each_declared_weights(monkeypatch, capsys, tmp_path):
    """`gasbench teachers` shows what each teacher kind declares: a changed declaration shows."""
    from gasbench.teachers.builtin import DigitsTeacher

    shipped = tmp_path / "mine.safetensors"
    shipped.write_bytes(b"weights")
    monkeypatch.setattr(DigitsTeacher, "weights", replace(DigitsTeacher.weights, shipped=shipped, pin="ab" * 32))
    monkeypatch.setattr("gasbench.cli_common.console.width", 400)  # whole cells, one line per row
    code, out, _ = gasbench(monkeypatch, capsys, "teachers", "--check")
    assert code == 0
    row = next(line for line in out.splitlines() if str(shipped) in line)
    assert "ab" * 32 in row and "sha256 DIFFERS" in row
    for entry in TEACHERS:  # every registered kind has a declaration, the hub ones included
        declared = declared_weights(entry.obj)
        assert isinstance(declared, WeightsDeclaration)
        shown = f"hub: {declared.hub_id}" if declared.hub_id else str(declared.path) if declared.path else None
        if shown is not None:
            assert shown in out, entry.name
    assert declared_weights(TEACHERS.get("imagenet256-dit")).hub_id == "facebook/DiT-XL-2-256"
    assert declared_weights(TEACHERS.get("sd15")).hub_id is not None


class _UsersData(GaussianMixtureTeacher):
    """The gmm teacher without data of its own: real images come from the protocol."""

    real_images = Teacher.real_images


def test_the_runner_evaluates_under_its_own_protocol(monkeypatch, capsys, tmp_path):
    """--reference-images reaches the metrics through a replaced protocol; the loaded teacher and
    its class keep theirs."""
    gmm = gmm_teacher()
    teacher = _UsersData(gmm.means, gmm.std)
    before = teacher.protocol
    monkeypatch.setattr("gasbench.runner.load_teacher", lambda *args, **kwargs: teacher)
    seen = []
    original = Teacher.real_images
    monkeypatch.setattr(_UsersData, "real_images", lambda self: seen.append(self.protocol) or original(self))
    images = tmp_path / "real.npz"
    np.savez(images, np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "8",
                            "--metrics", "fd", "--reference-images", images, "--results-dir", tmp_path / "r")
    assert code == 0, err
    assert seen and all(p.reference_images == images for p in seen)
    assert teacher.protocol is before and teacher.protocol.reference_images is None
    assert _UsersData.protocol is GaussianMixtureTeacher.protocol


def test_protocol_is_frozen_and_finds_the_users_images_first(tmp_path):
    protocol = EvaluationProtocol(real_images="set.zip")
    with pytest.raises(AttributeError):
        protocol.samples = 3
    assert protocol.real_image_path() is None or protocol.real_image_path().name.startswith("set")
    assert replace(protocol, reference_images=tmp_path).real_image_path() == tmp_path


def test_one_edm_scaling_serves_the_small_unet_the_release_networks_and_diffusers():
    """The three users of EDM Table 1's EDM row compute the same D from the same F."""
    from gasbench.teachers.edm_networks import EDMPrecond
    from gasbench.teachers.networks import SmallEDMPrecond, UNetConfig
    from gasbench.teachers.preconditioning import edm_scalings
    from gasbench.teachers.time import EDMSchedule

    sigma = torch.tensor([0.01, 0.5, 7.0, 80.0], dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma.reshape(-1, 1, 1, 1), 0.5)
    output = torch.randn_like(x)
    schedule = EDMSchedule(0.002, 80.0)
    scaled, timestep = schedule.model_input(x, sigma)
    assert torch.equal(scaled, c_in * x) and torch.equal(timestep, c_noise.flatten())
    assert torch.equal(schedule.to_denoised(output, x, sigma), c_skip * x + c_out * output)
    assert SmallEDMPrecond.__name__ != EDMPrecond.__name__
    net = SmallEDMPrecond(UNetConfig(img_channels=1, img_resolution=8, model_channels=8, channel_mult=(1,))).eval()
    seen = {}
    net.model.forward = lambda inputs, noise, labels, bottleneck: seen.update(inputs=inputs, noise=noise) or output.float()
    with torch.no_grad():
        denoised = net(x, sigma)
    assert torch.equal(seen["inputs"], (c_in * x).float()) and torch.equal(seen["noise"], c_noise.flatten().float())
    assert torch.equal(denoised, c_skip * x + c_out * output.float().double())
