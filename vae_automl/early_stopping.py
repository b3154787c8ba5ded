"""Pareto-aware successive halving: which trials to stop at a rung, decided on every objective at once.

Optuna refuses ``trial.report``/``should_prune`` in multi-objective studies
and Ray's schedulers take one metric, so the rule is ours, and both
backends call the same :func:`decide`.

Rungs are epochs of base-model training: ``first_rung, first_rung * eta,
first_rung * eta**2, ...`` (``eta`` is the reduction factor). At a rung a
trial is a point of objective values *at that budget*: the validation loss
its base reached so far (standing in for every objective that needs
training), and the objectives known before training (size in bytes,
parameter count, latency: measured on the untrained model after the
compression pipeline, whose shapes and codes do not depend on the
weights), taken as they are. The trial is compared with every other trial
that reached the same rung (asynchronous successive halving: the peers
are the trials that got there before it). It goes on when it is
non-dominated among them (never stopped then), or when the trials in
better non-dominated layers than its own are fewer than ``1/eta`` of the
rung (the successive-halving quota); otherwise it is stopped.

What stands for the objectives that need training is the pruner's
``score``: ``base``, the validation loss of the base so far; or
``compressed``, the validation loss of the base so far compressed by the
trial's own pipeline without any fine-tuning (the AMC idea, He et al.
2018: a compression setting scored on the trained model before
fine-tuning; a distill stage, whose student would be untrained, is left
out of it). ``compressed`` adds the cheapest rung, :data:`FINE_TUNE_RUNG`:
once the base is trained, or taken from the cache at no training cost,
and before any fine-tuning, every trial whose pipeline (less a distill
stage) fine-tunes is scored so and compared with the others there. A trial that reuses a
cached base never passes an epoch rung, so this rung is the only one
that can stop it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vae_automl import pareto
from vae_automl.config import PrunerConfig

RUNG_VALUES_ATTR = "rung_values"
"""Trial user attribute: ``{rung (str: an epoch or FINE_TUNE_RUNG): [score, *objectives known before training]}``."""
STOPPED_AT_ATTR = "pruned_at_epoch"
"""Trial user attribute: the rung that stopped the trial (its epoch, or :data:`FINE_TUNE_RUNG`)."""
FINE_TUNE_RUNG = "before_fine_tuning"
"""Key of the rung after base training and before fine-tuning (``score: compressed`` only)."""


@dataclass(frozen=True)
class Decision:
    stop: bool
    rank: int
    """Non-dominated layer of the trial among the rung's points (0: on the rung's front)."""
    better: int
    """Points at the rung in layers better than the trial's."""
    peers: int
    """Points at the rung, the trial included."""
    keep: int
    """How many points the quota keeps at this rung: ``ceil(peers / eta)``."""

    def reason(self, rung: int | str) -> str:
        return (
            f"dominated at the {rung_name(rung)}: {self.better} of {self.peers} trials there lie in better "
            f"non-dominated layers, and successive halving keeps {self.keep}"
        )


def rung_name(rung: int | str) -> str:
    """``epoch-3 rung`` or ``before-fine-tuning rung``, for messages."""
    return "before-fine-tuning rung" if str(rung) == FINE_TUNE_RUNG else f"epoch-{rung} rung"


def rung_score(config: PrunerConfig, validation_loss: float, compressed_loss: Callable[[], float]) -> float:
    """The figure a rung point starts with under ``config.score`` (``compressed_loss`` is only called for ``compressed``)."""
    return compressed_loss() if config.score == "compressed" else validation_loss


def rungs(config: PrunerConfig, max_epochs: int) -> list[int]:
    """The rung epochs below ``max_epochs`` (a trial that ends at a rung's epoch has nothing left to save)."""
    if config.name == "none" or config.warmup_epochs < 1:
        return []
    out, epoch = [], config.warmup_epochs
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= config.reduction_factor
    return out


def layers(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The non-dominated layer of each point (0: the front; 1: the front once layer 0 is removed; ...)."""
    rank = [-1] * len(points)
    left = list(range(len(points)))
    layer = 0
    while left:
        front = set(pareto.non_dominated([points[i] for i in left], directions))
        for k in front:
            rank[left[k]] = layer
        left = [i for k, i in enumerate(left) if k not in front]
        layer += 1
    return rank


def decide(point: Sequence[float], peers: Sequence[Sequence[float]], directions: Sequence[str], config: PrunerConfig) -> Decision:
    """Whether a trial at ``point`` stops at a rung where the other trials were at ``peers``.

    Fewer than ``config.min_trials`` peers: no verdict, the trial goes on.
    """
    points = [list(point), *[list(p) for p in peers]]
    ranks = layers(points, directions)
    keep = max(1, math.ceil(len(points) / config.reduction_factor))
    better = sum(1 for r in ranks[1:] if r < ranks[0])
    if len(peers) < config.min_trials:
        return Decision(False, ranks[0], better, len(points), keep)
    return Decision(ranks[0] > 0 and better >= keep, ranks[0], better, len(points), keep)


def rung_directions(static_directions: Sequence[str]) -> list[str]:
    """Directions of a rung point: the validation loss (minimized), then the objectives known before training."""
    return ["minimize", *static_directions]


def peers_at(rung_values: Sequence[Mapping[str, Sequence[float]]], rung: int | str) -> list[list[float]]:
    """Points that other trials stored (their :data:`RUNG_VALUES_ATTR`) for ``rung`` (an epoch or :data:`FINE_TUNE_RUNG`)."""
    return [list(values[str(rung)]) for values in rung_values if str(rung) in values]
