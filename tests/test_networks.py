"""The EDM-preconditioned UNet, its file format and the EDM training loop (small and fast)."""

import json

import pytest
import torch

from gasbench.teachers.networks import (
    SmallEDMPrecond,
    UNetConfig,
    load_network,
    read_network_metadata,
    save_network,
)
from gasbench.teachers.training import TrainConfig, train_edm

TINY_DIGITS = UNetConfig(
    img_channels=1,
    img_resolution=8,
    num_classes=10,
    model_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    emb_dim=32,
)


def _randomised(net: SmallEDMPrecond, seed: int = 0) -> SmallEDMPrecond:
    """Give every parameter (including the zero-initialised ones) non-trivial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return net.eval()


def test_config_json_round_trip():
    restored = UNetConfig.from_dict(json.loads(json.dumps(TINY_DIGITS.to_dict())))
    assert restored == TINY_DIGITS
    assert isinstance(restored.channel_mult, tuple)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    net = _randomised(SmallEDMPrecond(TINY_DIGITS))
    path = tmp_path / "net.safetensors"
    save_network(net, path, {"dataset": "test", "iterations": 3})

    loaded = load_network(path)
    assert loaded.config == TINY_DIGITS
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    metadata = read_network_metadata(path)
    assert metadata["dataset"] == "test" and metadata["iterations"] == "3"

    resaved = tmp_path / "resaved.safetensors"
    save_network(loaded, resaved, {"dataset": "test", "iterations": 3})
    assert resaved.read_bytes() == path.read_bytes()

    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0])
    labels = torch.arange(6)
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), loaded(x, sigma, labels))


def test_denoiser_is_identity_at_tiny_sigma():
    """c_skip -> 1 and c_out -> 0 as sigma -> 0 (EDM Table 1)."""
    net = _randomised(SmallEDMPrecond(TINY_DIGITS))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        denoised = net(x, 1e-6, torch.arange(4))
    torch.testing.assert_close(denoised, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.3, torch.tensor(0.3), torch.full((3,), 0.3)])
def test_float64_input_keeps_shape_and_dtype(sigma):
    net = _randomised(SmallEDMPrecond(TINY_DIGITS))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        denoised = net(x, sigma, torch.tensor([0, 5, 9]))
        denoised32 = net(x.float(), sigma, torch.tensor([0, 5, 9]))
    assert denoised.shape == x.shape and denoised.dtype == torch.float64
    torch.testing.assert_close(denoised.float(), denoised32, rtol=1e-4, atol=1e-5)


def test_class_label_changes_the_output():
    net = _randomised(SmallEDMPrecond(TINY_DIGITS))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(4)).expand(2, -1, -1, -1)
    with torch.no_grad():
        denoised = net(x, 1.0, torch.tensor([3, 7]))
    assert not torch.allclose(denoised[0], denoised[1])


@pytest.mark.parametrize("resolution", [28, 7])
def test_fashion_sized_unconditional_config_builds_and_runs(resolution):
    config = UNetConfig(
        img_channels=1,
        img_resolution=resolution,
        num_classes=0,
        model_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        emb_dim=32,
    )
    net = _randomised(SmallEDMPrecond(config))
    x = torch.randn(2, 1, resolution, resolution, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        denoised = net(x, torch.tensor([0.5, 5.0]))
    assert denoised.shape == x.shape and torch.isfinite(denoised).all()


def test_training_is_deterministic_and_resumable(tmp_path):
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    labels = torch.arange(32) % 10
    config = TrainConfig(iterations=4, batch_size=8, lr=1e-3, lr_warmup_iterations=2, seed=7,
                         checkpoint_every=2)

    def fresh_net() -> SmallEDMPrecond:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return SmallEDMPrecond(TINY_DIGITS)

    straight = train_edm(fresh_net(), images, labels, config, progress=False)
    checkpoint = tmp_path / "train.ckpt"
    short = TrainConfig(**{**config.__dict__, "iterations": 2})
    train_edm(fresh_net(), images, labels, short, checkpoint_path=checkpoint, progress=False)
    resumed = train_edm(fresh_net(), images, labels, config, checkpoint_path=checkpoint,
                        progress=False)

    assert torch.isfinite(torch.tensor(straight.final_loss))
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0)


def test_nan_loss_raises_clear_error():
    images = torch.full((8, 1, 8, 8), float("nan"))
    labels = torch.zeros(8, dtype=torch.int64)
    config = TrainConfig(iterations=2, batch_size=4, seed=0)
    with pytest.raises(RuntimeError, match=r"NaN/inf at iteration 1"):
        train_edm(SmallEDMPrecond(TINY_DIGITS), images, labels, config, progress=False)
