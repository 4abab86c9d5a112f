"""EDM training of :class:`SmallEDMPrecond` networks, and the recipe of the built-in digits teacher.

Implements the training objective of Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM, NeurIPS 2022), Sec. 5 and Table 1: ln(sigma) drawn from
N(P_mean, P_std^2), loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM Eq. 2 & 8),
Adam with a linear learning-rate warm-up, and an exponential moving average (EMA) of the weights
whose half-life is measured in training images and ramps up with the images seen, as in EDM's
training setup (Appendix F).
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gasbench.core.records import write_atomic

from .datasets import load_digits_tensor, load_fashion_tensor
from .networks import (
    SmallEDMPrecond,
    UNetConfig,
    count_parameters,
    save_network,
)

CHECKPOINT_FORMAT = "gasbench.edm_train_checkpoint.v1"
LOSS_AVERAGE_WINDOW = 100  # iterations averaged into the reported (and stored) final loss
# TrainConfig fields that may differ between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = frozenset({"iterations", "checkpoint_every"})


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_edm` (EDM Sec. 5 defaults for P_mean and P_std)."""

    iterations: int = 1600
    batch_size: int = 128
    lr: float = 2e-3
    lr_warmup_iterations: int = 200
    ema_halflife_images: float = 50_000.0
    ema_rampup_ratio: float = 0.05
    P_mean: float = -1.2
    P_std: float = 1.2
    seed: int = 0
    checkpoint_every: int = 500
    horizontal_flip: bool = False


class _LossAverage:
    """Mean of the last ``LOSS_AVERAGE_WINDOW`` losses, for the progress bar and the report."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values = (self.values + [value])[-LOSS_AVERAGE_WINDOW:]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan


def edm_loss(
    net: SmallEDMPrecond,
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The EDM training loss, averaged over batch and pixels (EDM Eq. 8, Sec. 5).

    lambda(sigma) ||D(y + n, sigma) - y||^2 with ln(sigma) ~ N(P_mean, P_std^2), n ~ N(0, sigma^2 I)
    and lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which gives the network F a unit-variance
    target at every noise level.
    """
    batch = images.shape[0]
    log_sigma = torch.randn(batch, generator=generator) * config.P_std + config.P_mean
    sigma = log_sigma.exp()
    noise = torch.randn(images.shape, generator=generator) * sigma.reshape(-1, 1, 1, 1)
    denoised = net(images + noise, sigma, labels)
    sd = net.sigma_data
    weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1, 1)
    return (weight * (denoised - images) ** 2).mean()


def _update_ema(
    ema_net: SmallEDMPrecond, net: SmallEDMPrecond, images_seen: int, config: TrainConfig
) -> None:
    """EMA with half-life min(ema_halflife_images, ema_rampup_ratio * images_seen) images."""
    halflife = min(config.ema_halflife_images, config.ema_rampup_ratio * images_seen)
    beta = 0.5 ** (config.batch_size / max(halflife, 1e-8))
    with torch.no_grad():
        for ema_param, param in zip(ema_net.parameters(), net.parameters()):
            ema_param.lerp_(param, 1.0 - beta)


def _draw_batch(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A batch drawn uniformly with replacement, flipped left-right at random if configured."""
    index = torch.randint(images.shape[0], (config.batch_size,), generator=generator)
    batch_images = images[index]
    if config.horizontal_flip:
        flip = torch.rand(config.batch_size, generator=generator) < 0.5
        batch_images = torch.where(flip.reshape(-1, 1, 1, 1), batch_images.flip(-1), batch_images)
    return batch_images, (labels[index] if labels is not None else None)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save of tensors and plain containers only (loadable with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path, net_config: UNetConfig, config: TrainConfig) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state["net_config"] != net_config.to_dict():
        raise ValueError(f"checkpoint {path} was written for another network configuration")
    saved, current = state["train_config"], asdict(config)
    changed = sorted(
        key for key in current if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]
    )
    if changed:
        raise ValueError(f"checkpoint {path} was written with different settings for {changed}")
    return state


def training_progress_bar(title: str, enabled: bool) -> Progress:
    """A rich bar with the running loss and ETA, shared by the teachers' and classifiers' training."""
    return Progress(
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def train_edm(
    net: SmallEDMPrecond,
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    config: TrainConfig,
    checkpoint_path: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> SmallEDMPrecond:
    """Train ``net`` in place with the EDM loss and return the EMA network (eval mode, frozen).

    Randomness comes from a generator seeded with ``config.seed`` and, for dropout, from torch's
    global generator seeded likewise inside a forked RNG scope, so a run is reproducible and the
    caller's global RNG state is left untouched. With ``checkpoint_path`` the full state (weights,
    EMA, Adam moments, RNG states) is written every ``config.checkpoint_every`` iterations and at
    the end, and an existing checkpoint there is resumed. The mean loss of the last iterations is
    stored in ``ema_net.final_loss``.

    Raises RuntimeError as soon as the loss is NaN or infinite, before the weights are updated.
    """
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    images = images.to(torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    ema_net = copy.deepcopy(net).eval().requires_grad_(False)
    losses = _LossAverage()
    start_iteration = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if checkpoint is not None and checkpoint.exists():
            state = _load_checkpoint(checkpoint, net.config, config)
            net.load_state_dict(state["net"])
            ema_net.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator_state"])
            torch.set_rng_state(state["global_rng_state"])
            losses.values = list(state["recent_losses"])
            start_iteration = state["iteration"]
            if start_iteration > config.iterations:
                raise ValueError(
                    f"checkpoint {checkpoint} is at iteration {start_iteration}, past the "
                    f"requested {config.iterations} iterations"
                )

        def save(iteration: int) -> None:
            if checkpoint is None:
                return
            _save_checkpoint(
                checkpoint,
                {
                    "format": CHECKPOINT_FORMAT,
                    "iteration": iteration,
                    "net": net.state_dict(),
                    "ema": ema_net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator_state": generator.get_state(),
                    "global_rng_state": torch.get_rng_state(),
                    "recent_losses": list(losses.values),
                    "net_config": net.config.to_dict(),
                    "train_config": asdict(config),
                },
            )

        net.train()
        with training_progress_bar("EDM training", progress) as bar:
            task = bar.add_task(
                "train", total=config.iterations, completed=start_iteration, loss=losses.mean
            )
            for iteration in range(start_iteration, config.iterations):
                warmup = min(1.0, (iteration + 1) / max(config.lr_warmup_iterations, 1))
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * warmup
                batch_images, batch_labels = _draw_batch(images, labels, config, generator)
                loss = edm_loss(net, batch_images, batch_labels, config, generator)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise RuntimeError(
                        f"EDM training loss became NaN/inf at iteration {iteration + 1} "
                        f"(loss={loss_value}); check the data for non-finite values or lower "
                        f"the learning rate (lr={config.lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _update_ema(ema_net, net, (iteration + 1) * config.batch_size, config)
                losses.add(loss_value)
                bar.update(task, advance=1, loss=losses.mean)
                if (iteration + 1) % config.checkpoint_every == 0:
                    save(iteration + 1)
        net.eval()
        save(config.iterations)
    ema_net.final_loss = losses.mean
    return ema_net


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that reproduces a built-in teacher's committed weights."""

    name: str
    net_config: UNetConfig
    train_config: TrainConfig
    load_data: Callable[[], tuple[torch.Tensor, Optional[torch.Tensor]]]
    dataset_description: str


RECIPES = {
    "digits": TeacherRecipe(
        name="digits",
        net_config=UNetConfig(img_channels=1, img_resolution=8, num_classes=10, model_channels=32, channel_mult=(1, 2),
                              num_res_blocks=2, emb_dim=128, dropout=0.0, attention=True),
        train_config=TrainConfig(),
        load_data=load_digits_tensor,
        dataset_description="sklearn.datasets.load_digits (1797 images, 1x8x8, [-1, 1], 10 classes)",
    ),
    # Sized for <= 90 minutes on 2 CPU cores: one residual block per level at 28/14/7 pixels
    # (0.63 s per batch-64 step, measured) for 5,000 steps, i.e. 5.3 epochs of the training set.
    "fashion": TeacherRecipe(
        name="fashion",
        net_config=UNetConfig(img_channels=1, img_resolution=28, num_classes=10, model_channels=32,
                              channel_mult=(1, 2, 2), num_res_blocks=1, emb_dim=128, dropout=0.0, attention=True),
        train_config=TrainConfig(
            iterations=5000, batch_size=64, lr=1e-3, lr_warmup_iterations=500, checkpoint_every=250
        ),
        load_data=load_fashion_tensor,
        dataset_description="Fashion-MNIST train split (60000 images, 1x28x28, [-1, 1], 10 classes)",
    ),
}


def train_builtin_teacher(
    name: str,
    out_path: Union[str, Path],
    iterations: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint_path: Optional[Union[str, Path]] = None,
) -> SmallEDMPrecond:
    """Train the built-in class-conditional teacher ``name`` (see RECIPES) and save it to ``out_path``.

    The metadata records the dataset, iterations, seed, final loss and parameter count (no wall
    time, so a rebuild on the same machine and thread count is byte-identical).
    """
    recipe = RECIPES[name]
    images, labels = recipe.load_data()
    iterations = recipe.train_config.iterations if iterations is None else iterations
    config = TrainConfig(**{**asdict(recipe.train_config), "iterations": iterations, "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallEDMPrecond(recipe.net_config)
    ema_net = train_edm(net, images, labels, config, checkpoint_path, progress)
    save_network(
        ema_net,
        out_path,
        {
            "dataset": recipe.dataset_description,
            "iterations": str(iterations),
            "seed": str(seed),
            "final_loss": f"{ema_net.final_loss:.6f}",
            "parameter_count": str(count_parameters(ema_net)),
            "train_config": {f.name: getattr(config, f.name) for f in fields(config)},
            "torch_version": torch.__version__,
        },
    )
    return ema_net
