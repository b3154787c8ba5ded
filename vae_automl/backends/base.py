"""The backend interface: what runs trials of a study, and the policy both backends follow.

A backend takes a study that :mod:`vae_automl.study` opened (with its
stored space and objectives), a :class:`~vae_automl.study.Budget` and a
:class:`SearchPolicy`, runs trials until the budget is spent, and stores
every trial's outcome in the study: a :class:`~vae_automl.record.TrialRecord`
for a completed one, a failure reason (``study.FAILURE_ATTR``) for a failed
one. ``front``, ``export`` and ``report`` then read the study the same
way whichever backend ran it.

Two backends implement it: :class:`vae_automl.backends.optuna.OptunaBackend`
(trials in this process; ``search`` and ``worker`` use it) and
:class:`vae_automl.backends.ray.RayBackend` (trials on a Ray cluster).

:class:`SearchPolicy` is the one place for what decides besides the trials
themselves, so both backends decide alike:

* :meth:`SearchPolicy.sampler`: the sampler factory (which Optuna sampler
  a study gets);
* :meth:`SearchPolicy.epoch_gate`: the early-stopping decision per epoch
  (the Optuna backend asks it after every epoch of the base; the Ray
  backend's scheduler decides per rung on the same validation loss);
* :meth:`SearchPolicy.trial_attrs`: what a finished trial stores besides
  its record (constraint values for a constrained sampler go here).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import optuna

from vae_automl.early_stopping import CurveStopper, PeerCurve
from vae_automl.record import BASE_PARAMS_ATTR, CURVE_ATTR
from vae_automl.study import completed_trials

if TYPE_CHECKING:
    from vae_automl.config import SearchSpace
    from vae_automl.progress import Progress
    from vae_automl.record import TrialRecord
    from vae_automl.registry import Registry
    from vae_automl.study import Budget

EpochGate = Callable[[int, float, int], "str | None"]
"""``gate(epoch, validation_loss, base_params)``: why to stop the trial after this (0-based) epoch, or None."""
PRUNED_AT_ATTR = "pruned_at_epoch"
"""Trial user attribute: the epoch (1-based) after which early stopping stopped the trial."""


class SearchPolicy:
    """The sampler, the early-stopping decision and the extra trial attributes of one search.

    Args:
        space: the search space (its ``sampler`` and ``pruner`` sections).
        registry: the registry the space was loaded with.
    """

    def __init__(self, space: SearchSpace, registry: Registry) -> None:
        self.space = space
        self.registry = registry

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler for the study (the same settings in every process of a search)."""
        config = self.space.sampler
        if config.name == "nsga2":
            kwargs: dict[str, Any] = {"seed": config.seed}
            if config.population_size:
                kwargs["population_size"] = config.population_size
            return optuna.samplers.NSGAIISampler(**kwargs)
        if config.name == "tpe":
            kwargs = {"seed": config.seed}
            if config.n_startup_trials is not None:
                kwargs["n_startup_trials"] = config.n_startup_trials
            return optuna.samplers.TPESampler(**kwargs)
        return optuna.samplers.RandomSampler(seed=config.seed)

    def epoch_gate(self, study: optuna.Study) -> EpochGate:
        """The early-stopping decision for one trial about to start, against the study's completed trials now."""
        pruner = self.space.pruner
        peers: list[PeerCurve] = []
        if pruner.name != "none":
            for t in completed_trials(study):
                curve, params = t.user_attrs.get(CURVE_ATTR), t.user_attrs.get(BASE_PARAMS_ATTR)
                if curve and params is not None:
                    peers.append(PeerCurve(tuple(curve), int(params)))
        stopper: CurveStopper | None = None

        def gate(epoch: int, validation_loss: float, base_params: int) -> str | None:
            nonlocal stopper
            if stopper is None:
                stopper = CurveStopper(pruner, peers, base_params)
            if not stopper.should_stop(epoch, validation_loss):
                return None
            return (
                f"validation loss {validation_loss:.3f} at epoch {epoch + 1} is above "
                f"{stopper.threshold(epoch):.3f}, the {pruner.percentile:g}th percentile "
                f"of {len(stopper.peers)} no-larger completed trials"
            )

        return gate

    def trial_attrs(self, record: TrialRecord) -> dict[str, Any]:
        """User attributes a completed trial stores besides its record (none by default)."""
        return {}


class Backend(abc.ABC):
    """Runs trials of a study until its budget is spent.

    A backend may leave nothing out: every trial it starts ends COMPLETE
    (with its record), PRUNED (stopped early) or FAIL (with its reason), and
    a failing trial fails alone.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def describe(self) -> str:
        """Where trials run, for the progress line (``on cpu (...)``, ``on Ray (...)``)."""

    @abc.abstractmethod
    def run(self, study: optuna.Study, budget: Budget, policy: SearchPolicy, progress: Progress) -> dict[str, int]:
        """Run trials of ``study`` until ``budget`` is spent.

        Args:
            study: the study, opened by :mod:`vae_automl.study` with
                ``policy.sampler()``.
            budget: how many trials to complete, start at most, and for how long.
            policy: the sampler, early stopping and extra attributes.
            progress: told about every finished trial.

        Returns:
            Counters of the run: ``base_trained`` and ``base_reused``.
        """
