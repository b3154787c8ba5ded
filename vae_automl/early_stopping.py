"""Stopping bad trials of a Pareto search early, on their validation curve.

Optuna refuses ``trial.report``/``should_prune`` in multi-objective studies
and Ray's schedulers take one metric, so this is ours. A trial is stopped
at epoch ``e`` (past ``warmup_epochs``) when its validation loss is worse
than the ``percentile`` of the losses that completed trials with a base
model no larger than its own had at the same epoch: a larger model that
trains worse than smaller ones is on its way to being dominated. Trials
with fewer than ``min_trials`` such peers are never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_automl.config import PrunerConfig


@dataclass(frozen=True)
class PeerCurve:
    validation_curve: tuple[float, ...]
    base_params: int


class CurveStopper:
    def __init__(self, config: PrunerConfig, peers: list[PeerCurve], base_params: int) -> None:
        self.config = config
        self.peers = [p for p in peers if p.base_params <= base_params]

    def threshold(self, epoch: int) -> float | None:
        """The loss above which a trial is stopped at ``epoch`` (0-based), or None if there is no verdict."""
        if self.config.name == "none" or epoch < self.config.warmup_epochs:
            return None
        losses = [p.validation_curve[epoch] for p in self.peers if len(p.validation_curve) > epoch]
        if len(losses) < self.config.min_trials:
            return None
        return float(np.percentile(losses, self.config.percentile))

    def should_stop(self, epoch: int, validation_loss: float) -> bool:
        limit = self.threshold(epoch)
        return limit is not None and validation_loss > limit
