"""The Optuna backend: trials run in this process by ``study.optimize`` (``search`` and ``worker``)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import optuna

from vae_automl import constraints, early_stopping
from vae_automl import space as space_mod
from vae_automl import study as study_mod
from vae_automl.backends.base import (
    DUPLICATE_ATTR,
    PRUNED_AT_ATTR,
    Backend,
    SearchPolicy,
    TrialCallback,
    duplicate_of,
    failure_reason,
    observe_study,
    pruned_reason,
)
from vae_automl.record import CURVE_ATTR
from vae_automl.trial import TrialEnv, measure_before_training, run_trial

if TYPE_CHECKING:
    from vae_automl.progress import Progress
    from vae_automl.study import Budget

Objective = Callable[[optuna.Trial], list[float]]


def make_objective(
    env: TrialEnv,
    study: optuna.Study,
    policy: SearchPolicy,
    trial_attrs: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> Objective:
    """The function ``study.optimize`` calls: sample, run, store the record, return the objective values.

    ``trial_attrs`` are set on every trial before it runs (a worker's name); ``progress`` is told the
    running trial's stages and epochs.
    """

    beats = study_mod.has_heartbeat(study)
    seed = policy.seeder()

    def objective(trial: optuna.Trial) -> list[float]:
        seed(study, trial.number)  # before the first suggest: parameters are drawn there
        if beats:
            # Optuna's heartbeat thread may not have beaten yet: a process killed before then would leave
            # this trial without a heartbeat row, so RUNNING for ever instead of stale and retried
            cast(Any, study._storage).record_heartbeat(trial._trial_id)
        for key, value in (trial_attrs or {}).items():
            trial.set_user_attr(key, value)
        curve: list[float] = []
        # sampling raises too (a stored parameter whose distribution changed): its reason must be stored like any other
        try:
            params = space_mod.suggest(trial, env.space)
            spec = space_mod.resolve(env.space, params, env.registry)
            if not env.space.sampler.repeats:
                repeat = duplicate_of(study, trial.number, dict(trial.params), trial.distributions)
                if repeat is not None:
                    trial.set_user_attr(DUPLICATE_ATTR, repeat)
                    raise optuna.TrialPruned(pruned_reason(trial.user_attrs))
            trial.set_user_attr("config", spec.as_dict())
            epochs = int(spec.training.get("epochs") or 0)
            gate = policy.epoch_gate(study, trial, epochs, lambda: measure_before_training(env, spec))
            if progress is not None:
                progress.trial_started(trial.number, epochs or None)

            def on_epoch(epoch: int, validation_loss: float, base_params: int, compressed_loss: Callable[[], float]) -> None:
                curve.append(validation_loss)
                if progress is not None:
                    progress.trial_epoch(trial.number, epoch + 1, validation_loss)
                reason = gate(epoch, validation_loss, base_params, compressed_loss)
                if reason is not None:
                    trial.set_user_attr(CURVE_ATTR, curve)
                    trial.set_user_attr(PRUNED_AT_ATTR, epoch + 1)
                    raise optuna.TrialPruned(reason)

            def before_fine_tuning(compressed_loss: float) -> None:
                reason = gate.before_fine_tuning(compressed_loss)
                if reason is not None:
                    trial.set_user_attr(CURVE_ATTR, curve)
                    trial.set_user_attr(PRUNED_AT_ATTR, early_stopping.FINE_TUNE_RUNG)
                    raise optuna.TrialPruned(reason)

            record = run_trial(
                env,
                spec,
                trial.number,
                on_epoch=on_epoch,
                before_fine_tuning=before_fine_tuning if gate.wants_fine_tune_rung else None,
                on_stage=(lambda stage: progress.trial_stage(trial.number, stage)) if progress is not None else None,
            )
            values = [record.objectives[name] for name in env.space.objectives]
            for key, value in {**record.to_user_attrs(), **policy.trial_attrs(record)}.items():
                trial.set_user_attr(key, value)
            constraints.set_constraints(trial, policy.constraints(record))
            study_mod.add_plugins(study, record.plugins)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(study_mod.FAILURE_ATTR, failure_reason(exc))
            raise
        return values

    return objective


def progress_callback(progress: Progress) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else None
        reason = trial.user_attrs.get(study_mod.FAILURE_ATTR)
        if trial.state == optuna.trial.TrialState.PRUNED:
            reason = pruned_reason(trial.user_attrs)
        front = None
        if trial.state == optuna.trial.TrialState.COMPLETE:
            # the study-wide best: earlier runs' and other workers' trials count, not only this process's
            front = observe_study(study, progress)
        progress.trial_finished(trial.number, trial.state.name, trial.values, seconds, reason, front)

    return callback


class StopAtFirstFeasible:
    """``stop_when: first_feasible``: stop the study once a completed trial met every target."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE and constraints.is_feasible_trial(trial):
            study.stop()


class _FailureCap:
    """Stop this process's ``study.optimize`` after ``limit`` of its trials failed or repeated another trial's parameters
    (a space whose trials all fail ends, and so does a space with no new point left)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failed, self.repeats = limit, 0, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL or DUPLICATE_ATTR in trial.user_attrs:
            self.failed += 1
            self.repeats += DUPLICATE_ATTR in trial.user_attrs
            if self.failed >= self.limit:
                study.stop()


class _StudyTarget:
    """Stop this process's ``study.optimize`` once the study holds ``target`` completed trials, every worker's.

    Optuna's ``MaxTrialsCallback`` does the same by reading every trial, running ones included, after each trial;
    one count query (:func:`vae_automl.study.count_completed`) keeps that cost flat as workers are added.
    """

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if study_mod.count_completed(study) >= self.target:
            study.stop()


class _OwnCompletedLimit:
    """Stop this process's ``study.optimize`` after it completed ``limit`` trials (other workers' do not count)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.completed = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            self.completed += 1
            if self.completed >= self.limit:
                study.stop()


class OptunaBackend(Backend):
    """Trials in this process, one after another, on the trial environment ``env``.

    Args:
        env: the data, registry and device of this process (:func:`vae_automl.trial.prepare`).
        trial_attrs: user attributes set on every trial this process runs (a worker's name).
    """

    name = "optuna"

    def __init__(self, env: TrialEnv, trial_attrs: dict[str, Any] | None = None) -> None:
        self.env = env
        self.trial_attrs = dict(trial_attrs or {})

    def describe(self) -> str:
        info = self.env.data.info
        return f"on {self.env.device} ({info['n_train']} training images of {info['dataset']})"

    def run(
        self,
        study: optuna.Study,
        budget: Budget,
        policy: SearchPolicy,
        progress: Progress,
        callbacks: Sequence[TrialCallback] = (),
    ) -> dict[str, int]:
        """Run trials until the study holds ``budget.target_completed`` completed trials, or this
        process completed ``budget.own_limit``; stop early after ``budget.max_attempts`` failed trials or
        ``budget.timeout_s``. A failing trial fails alone: it is stored with its reason and the study goes on.
        Trials stopped at a rung do not count toward ``max_attempts``: successive halving stops most by design.
        """
        # a process joining late cleans up after dead ones even if the budget leaves it nothing to run
        study_mod.fail_stale_trials(study)
        if budget.max_attempts <= 0:
            return dict(self.env.stats)
        # the user's callbacks right after progress: a callback that calls study.stop() ends the run as in optuna
        ours: list[TrialCallback] = [progress_callback(progress), *callbacks]
        if budget.target_completed is not None:
            ours.append(_StudyTarget(budget.target_completed))
        if budget.own_limit is not None:
            ours.append(_OwnCompletedLimit(budget.own_limit))
        if self.env.space.stop_when == "first_feasible":
            ours.append(StopAtFirstFeasible())
        cap = _FailureCap(budget.max_attempts)
        ours.append(cap)
        # --timeout stops a running trial too, not only the start of new ones (a drawn 60,000 epochs would run on)
        self.env.deadline = time.monotonic() + budget.timeout_s if budget.timeout_s is not None else None
        optimize_past_stale_failures(
            study,
            make_objective(self.env, study, policy, self.trial_attrs, progress),
            deadline=self.env.deadline,
            callbacks=ours,
        )
        return {**self.env.stats, "repeats": cap.repeats}


def optimize_past_stale_failures(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    deadline: float | None,
    callbacks: Sequence[TrialCallback],
) -> None:
    """``study.optimize`` until a callback stops it or ``deadline`` (time.monotonic) passes.

    Another process may fail this process's running trial as stale (its heartbeat came late on a starved
    machine); Optuna then refuses to store the result with ``ValueError: Cannot tell a FAIL trial`` from
    inside ``optimize``, which would end this worker. That trial's result is dropped with a warning (the
    stale rule has already re-queued it) and the run goes on.
    """
    while True:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return
        try:
            study.optimize(
                objective,
                n_trials=None,  # the callbacks end it: completed target, own limit, failures, first feasible
                timeout=timeout,
                catch=(Exception,),
                callbacks=list(callbacks),
                gc_after_trial=False,
            )
            return
        except (ValueError, AssertionError) as exc:
            # optuna 5.0's _run_trial turns that ValueError into "AssertionError: Should not reach." in its finally
            if not any(str(e).startswith("Cannot tell a FAIL trial") for e in (exc, exc.__context__)):
                raise
            warnings.warn(
                f"study {study.study_name!r}: another process failed this worker's running trial as stale "
                "(its heartbeat was late); its result is dropped and the trial is retried",
                stacklevel=2,
            )
