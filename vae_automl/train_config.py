"""A trial's training settings and the outcome of a training run, without torch.

What the trial driver and the declarations need to know about training
(:class:`TrainConfig` checked by ``config.TRAINING_PARAMS``, :class:`TrainResult`)
lives here, so a trial whose model is not torch's reads its settings without
importing torch; the trainer itself is :mod:`vae_automl.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vae_automl.config import TRAINING_PARAMS


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
