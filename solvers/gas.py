"""The Generalized Adversarial Solver (GAS, Sec. 3.2, Eq. 22): GS trained on distillation plus a
relativistic adversarial loss.

Each training iteration (as the GAS release orders it):

1. discriminator step: fakes are the student's samples from *fresh* noise (no gradient to the
   solver), reals the batch's teacher samples; loss f(D(real) - D(fake)) with
   f(t) = -log(1 + e^-t) (R3GAN's relativistic loss, Eq. 10) plus the zero-centred gradient
   penalties of Eq. 11 on both;
2. solver step: the distillation loss of GS on the batch plus ``adv_weight`` x
   f(D(student) - D(teacher)), the student's samples from the batch's own noise against the
   teacher's samples from that noise (Eq. 22), with the discriminator frozen.

Penalty weight: the paper's text sets lambda_1 = lambda_2 = 0.1 (Appendix D.4); the released
code passes ``Gamma=0.2`` and adds ``Gamma / 2 * (R1 + R2)``, the same 0.1 each. ``gamma`` here is
that code's Gamma (default 0.2), so each penalty weighs ``gamma / 2``.

Discriminator (option ``discriminator``): by default
:class:`~gasbench.solvers.discriminator.CompactDiscriminator`, random-initialised from the fit's
seed; ``compact-pretrained`` for the same network pre-trained on the teacher's samples by
``gasbench bench pretrain-discriminator`` (the built-in teachers' analogue of the pretrained R3GAN);
``r3gan`` for R3GAN's own layout at three-quarter width, random-initialised (the paper's
latent teachers); ``r3gan-pretrained`` for the R3GAN checkpoint the paper fine-tunes on the pixel
teacher (CIFAR-10's for cifar10, FFHQ-64's for ffhq and afhqv2), or the path of an R3GAN release
pickle (:mod:`gasbench.solvers.r3gan`).
The paper trains its discriminators with Adam lr 1e-5 over 10k-30k iterations; a built-in
teacher's CPU budget is a few hundred iterations, so ``disc_lr`` defaults to 1e-4 (the paper's
1e-5 is one option away: ``--solver-arg disc_lr=1e-5``).

Defaults follow Appendix D.4.1 for a small pixel set (CIFAR-10): adversarial weight 0.1 and
1,400 training pairs, GS's (the paper's 5,000 on its other teachers is ``--budget paper``); so
under the CPU budget GAS and GS fit the same pairs and differ by the adversarial term alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gasbench.core import distributed
from gasbench.core.phases import phase
from gasbench.core.registry import register_solver
from gasbench.solvers.discriminator import CompactDiscriminator, load_compact
from gasbench.solvers.gs import GeneralizedSolver
from gasbench.solvers.learned import distillation_loss
from gasbench.solvers.r3gan import (
    LATENT_LAYOUT,
    PRETRAINED,
    R3GANDiscriminator,
    load_r3gan_discriminator,
    pretrained_discriminator_file,
)


def relativistic_loss(logits_preferred: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """f(D(a) - D(b)) with f(t) = -log(1 + e^-t) as a loss to minimise: softplus(-(D(a) - D(b))),
    per sample (Eq. 10, as R3GAN writes it)."""
    return F.softplus(logits_other - logits_preferred)


def gradient_penalty(samples: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """||grad_x D(x)||^2 per sample (Eq. 11), differentiable in the discriminator."""
    (gradient,) = torch.autograd.grad(logits.sum(), samples, create_graph=True)
    return gradient.square().flatten(1).sum(1)


@register_solver("gas", description="Generalized Adversarial Solver (GAS Eq. 22): GS + relativistic adversarial loss")
class GeneralizedAdversarialSolver(GeneralizedSolver):
    """GAS: :class:`~gasbench.solvers.gs.GeneralizedSolver` with the adversarial term; see the
    module docstring for the training step and the defaults."""

    name = "gas"
    options = {
        **GeneralizedSolver.options,
        "adv_weight": 0.1,
        "gamma": 0.2,
        "disc_lr": 1e-4,
        "disc_width": 32,
        "discriminator": "compact",
    }

    @classmethod
    def paper_budget(cls, teacher) -> dict[str, Any]:
        """GAS Appendix D.4: GS's settings plus the adversarial ones: 5,000 training pairs and
        adversarial weight 1.0 (CIFAR-10: 1,400 and 0.1), discriminator Adam lr 1e-5, lambda_1 =
        lambda_2 = 0.1 (``gamma`` 0.2), the pretrained R3GAN discriminator on the pixel teachers that
        have one and R3GAN's layout from random init on latents (D.4.1-D.4.3); 2k iterations on
        Stable Diffusion."""
        budget = {**super().paper_budget(teacher), "train_size": 5000, "adv_weight": 1.0, "disc_lr": 1e-5, "gamma": 0.2,
                  "discriminator": "r3gan-pretrained" if teacher.name in PRETRAINED else "r3gan"}
        if teacher.name == "cifar10":
            budget.update(train_size=1400, adv_weight=0.1)
        if teacher.modality == "text":
            budget["iterations"] = 2000
        return budget

    def passes_per_iteration(self, nfe: int) -> int:
        """GS's forward and backward passes, plus the forward passes of the fakes the
        discriminator step samples from fresh noise."""
        return super().passes_per_iteration(nfe) * 3 // 2

    def make_discriminator(self, teacher) -> torch.nn.Module:
        """The ``discriminator`` option: ``compact`` (default), ``compact-pretrained`` (it, pre-trained
        on the teacher's samples), ``r3gan`` (R3GAN's FFHQ-64 layout at
        three-quarter width, random init: GAS's choice for latent teachers), ``r3gan-pretrained``
        (the teacher's pretrained R3GAN checkpoint: GAS's choice for pixel teachers) or the path of
        an R3GAN release pickle, read without running its code."""
        choice = self.config["discriminator"]
        if choice == "compact":
            return CompactDiscriminator(tuple(teacher.shape), getattr(teacher, "num_classes", 0),
                                        width=self.config["disc_width"])
        if choice == "compact-pretrained":
            return load_compact(teacher)
        if choice == "r3gan":
            return R3GANDiscriminator(channels=teacher.shape[0], **LATENT_LAYOUT)
        if choice == "r3gan-pretrained":
            return load_r3gan_discriminator(pretrained_discriminator_file(teacher.name))
        return load_r3gan_discriminator(Path(choice))

    def start_training(self, teacher, nfe: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config["seed"])
            # on the teacher's device (a GPU), like the networks; the solver's tensors cross to it
            self.discriminator = self.make_discriminator(teacher).to(teacher.device)
        self.discriminator.requires_grad_(False)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.config["disc_lr"], betas=(0.9, 0.999))

    def training_state(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "disc_optimizer": self.disc_optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])

    def judge(self, x: torch.Tensor, cond) -> torch.Tensor:
        """The discriminator's logits of ``x``, computed on its device and returned to ``x``'s."""
        device = next(self.discriminator.parameters()).device
        cond = cond.to(device) if cond is not None else None
        return self.discriminator(x.to(device), cond).to(x.device)

    @phase("discriminator")
    def discriminator_step(self, fake: torch.Tensor, real: torch.Tensor, cond) -> None:
        """One Adam step of the discriminator on the relativistic loss + gamma/2 (R1 + R2)."""
        disc = self.discriminator.requires_grad_(True)
        real, fake = real.detach().requires_grad_(True), fake.detach().requires_grad_(True)
        real_logits, fake_logits = self.judge(real, cond), self.judge(fake, cond)
        penalties = gradient_penalty(real, real_logits) + gradient_penalty(fake, fake_logits)
        loss = (relativistic_loss(real_logits, fake_logits) + self.config["gamma"] / 2 * penalties).mean()
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(disc.parameters(), len(real))
        self.disc_optimizer.step()
        disc.requires_grad_(False)

    def training_loss(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor], generator: torch.Generator,
                      checkpointing: bool = False) -> torch.Tensor:
        cond, real = batch.get("cond"), batch["x0"]
        # drawn for the whole batch by every process (a distributed fit keeps the generators in
        # step), each keeping its slice of it, as of the batch
        shape = (distributed.total(len(real)), *batch["noise"].shape[1:])
        fresh = distributed.shard(torch.randn(shape, generator=generator, dtype=batch["noise"].dtype))
        with torch.no_grad():
            fake = self.solve(params, teacher, nfe, fresh, cond)
        self.discriminator_step(fake, real, cond)
        student = self.solve(params, teacher, nfe, batch["noise"], cond, checkpointing)
        adversarial = relativistic_loss(self.judge(student, cond), self.judge(real, cond)).mean()
        return distillation_loss(self.config["loss"], student, real, teacher) + self.config["adv_weight"] * adversarial
