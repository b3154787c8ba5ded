"""The ELBO trainer: data resident on the device, shuffling by index, no per-step host sync."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vae_automl.data import DataSplits
from vae_automl.errors import TrialFailed
from vae_automl.vae import VAE, kl_to_prior, negative_elbo, reconstruction_nll

ExtraLoss = Callable[[VAE, torch.Tensor], torch.Tensor]
"""``extra_loss(model, x) -> scalar`` added to the negative ELBO of each batch (distillation, L1, ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one trial (the ``training:`` section of a search space, sampled)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    weight_decay: float = 0.0
    patience: int | None = None
    """Stop when validation loss has not improved for this many epochs, keeping the best weights."""
    capture: str = "auto"
    """``auto``: capture the training step in a CUDA graph where possible; ``off``: always eager."""
    max_seconds: float | None = None
    """Per-trial time limit for training; past it the trial fails with that reason."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, but got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, but got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, but got {self.lr}")
        if self.capture not in ("auto", "on", "off"):
            raise ValueError(f"capture must be auto, on or off, but got {self.capture!r}")


@dataclass
class TrainResult:
    epochs_run: int = 0
    validation_curve: list[float] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    stopped_early: bool = False
    captured: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@torch.no_grad()
def evaluate_elbo(model: VAE, x: torch.Tensor, beta: float = 1.0, seed: int = 0, chunk: int = 2048) -> float:
    """Negative ELBO in nats per image over ``x``, with noise fixed by ``seed`` (repeatable)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        eps = torch.randn(len(xb), model.latent_dim, generator=generator, device=x.device)
        decoded, mu, logvar = model(xb, eps)
        total += float((reconstruction_nll(model, decoded, xb) + beta * kl_to_prior(mu, logvar)).sum())
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def evaluate_recon_error(model: VAE, x: torch.Tensor, chunk: int = 2048) -> float:
    """Mean per-pixel binary cross-entropy of the reconstruction through the posterior mean."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        recon = model.reconstruct(xb).clamp(1e-7, 1 - 1e-7)
        total += float(torch.nn.functional.binary_cross_entropy(recon, xb, reduction="sum"))
    model.train(was_training)
    return total / x.numel()


def train(
    model: VAE,
    data: DataSplits,
    config: TrainConfig,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    extra_loss: ExtraLoss | None = None,
    after_step: Callable[[VAE], None] | None = None,
    lr: float | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train`` and return its curves.

    ``on_epoch(epoch, validation_loss)`` runs after each epoch and may raise
    (``optuna.TrialPruned`` stops a bad trial early). ``after_step(model)``
    runs after each optimizer step (re-applying a pruning mask, say). A NaN
    or infinite loss raises :class:`TrialFailed` naming the epoch.
    """
    device = data.train.device
    model.to(device).train()
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr or config.lr, weight_decay=config.weight_decay)
    x_train = data.train
    n = len(x_train)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size
    result = TrainResult()
    best_loss, best_state, since_best = math.inf, None, 0
    started = time.perf_counter()

    def loss_of(xb: torch.Tensor) -> torch.Tensor:
        loss = negative_elbo(model, xb, config.beta)
        if extra_loss is not None:
            loss = loss + extra_loss(model, xb)
        return loss

    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator, device=device)
        epoch_loss = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            xb = x_train.index_select(0, order[step * batch_size:(step + 1) * batch_size])
            loss = loss_of(xb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            epoch_loss += loss.detach()
            if config.max_seconds is not None and step % 32 == 0 and time.perf_counter() - started > config.max_seconds:
                raise TrialFailed(f"training exceeded the time limit of {config.max_seconds:g} s (epoch {epoch + 1})")
        result.samples += steps_per_epoch * batch_size
        train_loss = float(epoch_loss) / max(steps_per_epoch, 1)
        validation_loss = evaluate_elbo(model, data.validation, config.beta, seed=seed)
        if not (math.isfinite(train_loss) and math.isfinite(validation_loss)):
            raise TrialFailed(f"loss diverged to {train_loss if not math.isfinite(train_loss) else validation_loss} "
                              f"at epoch {epoch + 1} (lr={lr or config.lr:g})")
        result.train_curve.append(train_loss)
        result.validation_curve.append(validation_loss)
        result.epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch, validation_loss)
        if config.patience is not None:
            if validation_loss < best_loss:
                best_loss, best_state, since_best = validation_loss, copy.deepcopy(model.state_dict()), 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    result.stopped_early = True
                    break
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            raise TrialFailed(f"training exceeded the time limit of {config.max_seconds:g} s (epoch {epoch + 1})")
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


def train_config_from(values: dict[str, Any], **overrides: Any) -> TrainConfig:
    """A TrainConfig from sampled ``training:`` values (unknown keys are ignored by the caller's validation)."""
    fields = {k: v for k, v in {**values, **overrides}.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**fields)
