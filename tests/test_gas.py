"""GAS: GS plus the relativistic adversarial loss (Eq. 10, 11, 22) and its discriminator."""

from __future__ import annotations

import pytest
import torch

from gasbench.core.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.solvers.discriminator import CompactDiscriminator
from gasbench.solvers.gas import gradient_penalty, relativistic_loss

FAST = {"iterations": 40, "batch_size": 16, "lr": 1e-2, "train_size": 96}


def test_untrained_gas_is_dpmpp3m(gmm):
    gas = SOLVERS.get("gas")().table(gmm, 4)
    base = SOLVERS.get("dpmpp3m")(schedule="time-uniform").table(gmm, 4)
    torch.testing.assert_close(gas.c, base.c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gas.sigmas, base.sigmas, rtol=1e-12, atol=1e-12)


def test_relativistic_loss_and_penalty_match_their_equations():
    a, b = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.5])
    torch.testing.assert_close(relativistic_loss(a, b), torch.log1p(torch.exp(-(a - b))))
    weight = torch.randn(1, 3, 2, 2)
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    logits = (x * weight).flatten(1).sum(1) + (x**2).flatten(1).sum(1)  # grad = weight + 2x
    expected = (weight + 2 * x.detach()).square().flatten(1).sum(1)
    torch.testing.assert_close(gradient_penalty(x, logits), expected)


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 8, 8), (1, 28, 28), (3, 32, 32), (4, 64, 48)])
def test_discriminator_takes_every_teacher_shape(shape):
    disc = CompactDiscriminator(shape, num_classes=10)
    out = disc(torch.randn(3, *shape), torch.tensor([0, 4, 9]))
    assert out.shape == (3,) and bool(torch.isfinite(out).all())
    assert CompactDiscriminator(shape)(torch.randn(2, *shape)).shape == (2,)


def test_discriminator_steps_learn_to_separate_real_from_fake(gmm, gmm_pairs):
    solver = SOLVERS.get("gas")(disc_lr=1e-3)
    solver.start_training(gmm, 4)
    real = gmm_pairs[0]["x0"][:64]
    fake = real + 0.7  # a shifted "student"
    margin = lambda: float((solver.discriminator(real) - solver.discriminator(fake)).mean())  # noqa: E731
    before = margin()
    for _ in range(30):
        solver.discriminator_step(fake, real, None)
    assert margin() > before + 0.5
    assert not any(p.requires_grad for p in solver.discriminator.parameters())  # frozen for the solver step


def test_gas_fit_lowers_validation_loss_differs_from_gs_and_reloads(gmm, gmm_pairs, tmp_path):
    gas = SOLVERS.get("gas")(**FAST, adv_weight=0.5)
    result = gas.fit(gmm, 4, *gmm_pairs, progress=False)
    assert result.final_validation_loss < result.initial_validation_loss
    plain = SOLVERS.get("gas")(**FAST, adv_weight=0.0)
    plain.fit(gmm, 4, *gmm_pairs, progress=False)
    assert not torch.allclose(gas.params["c_hat"], plain.params["c_hat"])  # the adversarial term acts
    gas.save_state(tmp_path, gmm, 4)
    again = SOLVERS.get("gas")(**FAST, adv_weight=0.5)
    assert again.load_state(tmp_path, gmm, 4)
    seeds = list(range(50_000, 50_016))
    assert torch.equal(sample_seeds(gmm, again.table(gmm, 4), seeds, 16), sample_seeds(gmm, gas.table(gmm, 4), seeds, 16))
    assert not SOLVERS.get("gas")(**FAST, adv_weight=0.1).load_state(tmp_path, gmm, 4)


def test_resumed_gas_fit_restores_the_discriminator(gmm, gmm_pairs, tmp_path):
    whole = SOLVERS.get("gas")(**FAST)
    whole.fit(gmm, 3, *gmm_pairs, progress=False)
    SOLVERS.get("gas")(**{**FAST, "iterations": 20}).fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=tmp_path / "c.pt")
    resumed = SOLVERS.get("gas")(**FAST)
    assert resumed.fit(gmm, 3, *gmm_pairs, progress=False, checkpoint_path=tmp_path / "c.pt").resumed_at == 20
    for key in whole.params:
        torch.testing.assert_close(resumed.params[key], whole.params[key], rtol=0, atol=0)
    for key, value in whole.discriminator.state_dict().items():
        torch.testing.assert_close(resumed.discriminator.state_dict()[key], value, rtol=0, atol=0)
