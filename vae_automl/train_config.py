"""A trial's training settings and the outcome of a training run, without torch.

What the trial driver and the declarations need to know about training
(:class:`TrainConfig` checked by ``config.TRAINING_PARAMS``, :class:`TrainResult`)
lives here, so a trial whose model is not torch's reads its settings without
importing torch; the trainer itself is :mod:`vae_automl.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from vae_automl.config import TRAINING_PARAMS


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one trial (the ``training:`` section of a search space, sampled)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    """How the learning rate moves over a run of :func:`vae_automl.train.train`: ``constant``, or ``cosine``:
    ``lr x (1 + cos(pi x step / steps)) / 2`` at optimizer step ``step`` of the run's ``steps``
    (:func:`scheduled_lr`), from ``lr`` at the first step down towards 0."""
    finetune_lr_schedule: str = "constant"
    """``lr_schedule`` of each fine-tuning run of the compressors (:meth:`for_fine_tuning`), each over its own steps
    and from its own rate (a compressor's ``qat_lr``, say); ``lr_schedule`` is the base's."""
    beta: float = 1.0
    weight_decay: float = 0.0
    patience: int | None = None
    """Stop when validation loss has not improved for this many epochs, keeping the best weights."""
    capture: str = "auto"
    """CUDA-graph capture of the training step. ``auto``: capture where possible (a CUDA device, and
    ``extra_loss``/``after_step`` absent or marked ``capture_safe``), else run eagerly, logging why once;
    ``on``: capture or raise (:class:`ConfigError` where capture is impossible, :class:`TrialFailed`
    where capturing fails); ``off``: always eager."""
    max_seconds: float | None = None
    """Per-trial time limit for training; past it the trial fails with that reason."""

    def __post_init__(self) -> None:
        # the bounds of the YAML's training: keys, so a TrainConfig made in Python is checked by the same rules
        for param in TRAINING_PARAMS:
            param.check(getattr(self, param.name))

    def steps_per_epoch(self, samples: int) -> int:
        """Optimizer steps of one epoch over ``samples`` training samples: full batches only (the last partial one is
        dropped, so every step has one shape; a split smaller than a batch is one batch)."""
        return samples // min(self.batch_size, samples) if samples > 0 else 0

    def for_fine_tuning(self, epochs: int) -> TrainConfig:
        """The settings of a compressor's fine-tuning run of ``epochs`` epochs: these settings without early stopping,
        and ``finetune_lr_schedule`` as its schedule."""
        return replace(self, epochs=int(epochs), patience=None, lr_schedule=self.finetune_lr_schedule)


def scheduled_lr(schedule: str, lr: float, step: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run of ``steps`` steps under ``schedule``.

    ``cosine`` is PyTorch's ``CosineAnnealingLR`` with ``T_max = steps`` and ``eta_min = 0``, stepped once per
    optimizer step: ``lr`` at step 0, ``lr / 2`` half way, ``lr x (1 + cos(pi x (steps - 1) / steps)) / 2`` at the last.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"unknown lr_schedule {schedule!r}; known: constant, cosine")


@dataclass
class TrainResult:
    epochs_run: int = 0
    validation_curve: list[float] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    stopped_early: bool = False
    captured: bool = False
    """Whether the training step ran as a replayed CUDA graph."""
    eager_reason: str | None = None
    """Why the step ran eagerly (None when captured, or when no step ran)."""

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def train_config_from(values: dict[str, Any], **overrides: Any) -> TrainConfig:
    """A TrainConfig from sampled ``training:`` values (unknown keys are ignored by the caller's validation)."""
    fields = {k: v for k, v in {**values, **overrides}.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**fields)
