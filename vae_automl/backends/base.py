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

* :meth:`SearchPolicy.sampler`: the sampler factory (:mod:`vae_automl.samplers`:
  which Optuna sampler a study gets);
* :meth:`SearchPolicy.epoch_gate`: the early-stopping decision at the rungs
  (:mod:`vae_automl.early_stopping`; the Optuna backend asks it after every
  epoch of the base, and before fine-tuning under ``score: compressed``; the
  Ray backend's scheduler calls the same :func:`~vae_automl.early_stopping.decide`
  on the rung points its trials report);
* :meth:`SearchPolicy.trial_attrs`: what a finished trial stores besides
  its record, and :meth:`SearchPolicy.constraints`: the targets' constraint
  values, which both backends store with ``trial.set_constraint``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import optuna

from vae_automl import constraints, early_stopping, pareto, samplers
from vae_automl import study as study_mod
from vae_automl.errors import VaeAutomlError
from vae_automl.study import TrialCallback

if TYPE_CHECKING:
    from vae_automl.config import SearchSpace
    from vae_automl.progress import Progress
    from vae_automl.record import TrialRecord
    from vae_automl.registry import Registry
    from vae_automl.study import Budget

PRUNED_AT_ATTR = early_stopping.STOPPED_AT_ATTR
"""Trial user attribute: the rung at which early stopping stopped the trial (its 1-based epoch, or
:data:`~vae_automl.early_stopping.FINE_TUNE_RUNG`)."""


DUPLICATE_ATTR = "duplicate_of"
"""Trial user attribute: the completed (or running) trial whose exact parameters this one drew; it was not run."""


def duplicate_of(
    study: optuna.Study,
    number: int,
    params: dict[str, Any],
    distributions: dict[str, optuna.distributions.BaseDistribution] | None = None,
) -> int | None:
    """A completed or running trial of ``study``, other than ``number``, with exactly ``params``; None if there is none.

    A resumed run, or a second worker, may draw a point the study already
    holds; running it again would spend the budget on a copy and show the
    front a duplicate pair. Given the params' ``distributions`` on an RDB
    storage, one query finds the copy (:func:`vae_automl.study.rdb_duplicate_of`):
    reading the trials instead re-reads every running trial on each call, which a
    single Ray driver asking for 64 concurrent trials cannot afford.
    """
    if distributions is not None:
        found = study_mod.rdb_duplicate_of(study, number, params, distributions)
        if found is not study_mod.NOT_RDB:
            return cast(int | None, found)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    for trial in study.get_trials(deepcopy=False, states=states):
        if trial.number != number and trial.params == params:
            return trial.number
    return None


def observe_study(study: optuna.Study, progress: Progress) -> int:
    """Show ``progress`` every completed trial of the study (the study-wide best counts every process's and every
    earlier run's trials); returns the size of the study's Pareto front."""
    values = study_mod.completed_values(study)
    for number, trial_values in values.items():
        progress.observe(number, trial_values)
    directions = list(progress.directions) or study_mod.objectives_of(study)[1]
    return len(pareto.non_dominated(list(values.values()), directions))


def pruned_reason(attrs: dict[str, Any]) -> str:
    """Why a PRUNED trial stopped: a repeat of another trial, or early stopping at a rung."""
    if DUPLICATE_ATTR in attrs:
        return f"not run: the same parameters as trial {attrs[DUPLICATE_ATTR]}"
    return f"stopped at the {early_stopping.rung_name(attrs.get(PRUNED_AT_ATTR, '?'))}"


def failure_reason(exc: BaseException) -> str:
    """What a failed trial stores (``study.FAILURE_ATTR``): our errors' messages as they are, others with their type."""
    return str(exc) if isinstance(exc, VaeAutomlError) else f"{type(exc).__name__}: {exc}"


class SearchPolicy:
    """The sampler, the early-stopping decision and the extra trial attributes of one search.

    Args:
        space: the search space (its ``sampler`` and ``pruner`` sections).
        registry: the registry the space was loaded with.
    """

    def __init__(self, space: SearchSpace, registry: Registry) -> None:
        self.space = space
        self.registry = registry

    def sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The Optuna sampler for the study (the same settings in every process of a search).

        ``seed_offset`` shifts a fixed seed: a resumed study or a second worker would otherwise
        replay the random start-up points the study already holds.
        """
        return samplers.make_sampler(self.space.sampler, self.space, seed_offset=seed_offset, registry=self.registry)

    def seeder(self) -> SeedFromFirstTrial:
        """What reseeds this process's sampler at its first trial (:class:`SeedFromFirstTrial`)."""
        return SeedFromFirstTrial(self)

    def epoch_gate(
        self, study: optuna.Study, trial: optuna.Trial, epochs: int, before_training: Callable[[], dict[str, float]]
    ) -> RungGate:
        """The rung decisions for one trial of ``epochs`` epochs, against every other trial's rung points.

        ``before_training()`` measures the objectives known before training (called once, at the
        first rung). At each rung the gate stores the trial's point (user attribute
        :data:`~vae_automl.early_stopping.RUNG_VALUES_ATTR`, which peers read, stopped trials included).
        """
        return RungGate(self, study, trial, epochs, before_training)

    def rung_directions(self) -> list[str]:
        """Directions of a rung point: the validation loss, then the space's objectives known before training."""
        objectives = self.registry.objectives
        known = self.registry.known_before_training(self.space.objectives)
        return early_stopping.rung_directions([objectives.get(n).direction for n in known])

    def trial_attrs(self, record: TrialRecord) -> dict[str, Any]:
        """User attributes a completed trial stores besides its record (none by default)."""
        return {}

    def constraints(self, record: TrialRecord) -> list[constraints.Check]:
        """The space's targets checked on a completed trial (stored with :func:`vae_automl.constraints.set_constraints`)."""
        return constraints.check(self.space.targets, record.metrics, record.baseline) if self.space.targets else []


class SeedFromFirstTrial:
    """Seeds a process's sampler from the number of the first trial it asks for, before that trial samples.

    A fixed ``sampler.seed`` S would make every process that opens the study draw the same points: a resumed run
    would replay the study's first trials, and two drivers or workers started together on an empty study would
    draw the same point at once. Trial numbers are handed out by the storage, one per trial, so no two processes
    get the same first number: the sampler becomes ``seed S + that number``. A fresh study searched by one
    process still draws exactly what seed S gives (its first trial is number 0), and a resumed one draws what
    S + (the trials the study held) gives, both reproducible. Called again, it does nothing; without a seed it
    leaves the sampler (seeded by Optuna from the OS) alone.
    """

    def __init__(self, policy: SearchPolicy) -> None:
        self.policy = policy
        self.seeded = policy.space.sampler.seed is None

    def __call__(self, study: optuna.Study, trial_number: int) -> None:
        if self.seeded:
            return
        self.seeded = True
        study.sampler = self.policy.sampler(seed_offset=trial_number)


class RungGate:
    """One Optuna trial's rung decisions (:meth:`SearchPolicy.epoch_gate`); each call says why to stop, or None."""

    def __init__(
        self,
        policy: SearchPolicy,
        study: optuna.Study,
        trial: optuna.Trial,
        epochs: int,
        before_training: Callable[[], dict[str, float]],
    ) -> None:
        self.policy, self.study, self.trial = policy, study, trial
        self.pruner = policy.space.pruner
        self.rung_epochs = set(early_stopping.rungs(self.pruner, epochs))
        self.before_training = before_training
        self.static: dict[str, float] | None = None
        self.points: dict[str, list[float]] = {}

    def __call__(self, epoch: int, validation_loss: float, base_params: int, compressed_loss: Callable[[], float]) -> str | None:
        """After the (0-based) ``epoch`` of base training; ``compressed_loss()`` scores the base so far."""
        done = epoch + 1
        if done not in self.rung_epochs:
            return None
        return self._decide(done, early_stopping.rung_score(self.pruner, validation_loss, compressed_loss))

    def before_fine_tuning(self, compressed_loss: float) -> str | None:
        """Once the base is ready and before fine-tuning (``score: compressed`` only; see :func:`run_trial`)."""
        return self._decide(early_stopping.FINE_TUNE_RUNG, compressed_loss)

    @property
    def wants_fine_tune_rung(self) -> bool:
        return self.pruner.name != "none" and self.pruner.score == "compressed"

    def _decide(self, rung: int | str, score: float) -> str | None:
        if self.static is None:
            self.static = self.before_training()
        point = [score, *self.static.values()]
        self.points[str(rung)] = point
        self.trial.set_user_attr(early_stopping.RUNG_VALUES_ATTR, self.points)
        others = [
            t.user_attrs.get(early_stopping.RUNG_VALUES_ATTR) or {}
            for t in self.study.get_trials(deepcopy=False)
            if t.number != self.trial.number
        ]
        objectives = self.policy.registry.objectives
        directions = early_stopping.rung_directions([objectives.get(n).direction for n in self.static])
        decision = early_stopping.decide(point, early_stopping.peers_at(others, rung), directions, self.pruner)
        return decision.reason(rung) if decision.stop else None


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
    def run(
        self,
        study: optuna.Study,
        budget: Budget,
        policy: SearchPolicy,
        progress: Progress,
        callbacks: Sequence[TrialCallback] = (),
    ) -> dict[str, int]:
        """Run trials of ``study`` until ``budget`` is spent.

        Args:
            study: the study, opened by :mod:`vae_automl.study` with
                ``policy.sampler()``.
            budget: how many trials to complete, start at most, and for how long.
            policy: the sampler, early stopping and extra attributes.
            progress: told about every finished trial.
            callbacks: the user's Optuna callbacks, called with the study and each finished
                trial once it is stored (record, state and values), after ``progress``.

        Returns:
            Counters of the run: ``base_trained``, ``base_reused`` and ``repeats`` (drawn points a completed or
            running trial already had, not run).
        """
