"""Budget counting at its boundaries: how many trials a run starts, which trials count, when a run stops."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from vae_automl.backends.optuna import _FailureCap, _OwnCompletedLimit
from vae_automl.study import ATTEMPTS_PER_TRIAL, BUDGET_ATTR, Budget, plan_search, plan_worker

STATES = optuna.trial.TrialState


def study_with(complete: int, failed: int = 0, pruned: int = 0) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for _ in range(complete):
        study.add_trial(optuna.trial.create_trial(state=STATES.COMPLETE, values=[1.0, 2.0]))
    for state, n in ((STATES.FAIL, failed), (STATES.PRUNED, pruned)):
        for _ in range(n):
            study.add_trial(optuna.trial.create_trial(state=state))
    return study


SPACE = SimpleNamespace(trials=5)


def test_attempts_per_trial_is_three() -> None:
    assert ATTEMPTS_PER_TRIAL == 3  # the figures below and test_early_stopping's 6 failed attempts depend on it


@pytest.mark.parametrize(("done", "n", "target"), [(0, 5, 5), (4, 1, 5), (5, 0, 5), (7, 0, 7)])
def test_search_without_trials_completes_the_space_budget(done: int, n: int, target: int) -> None:
    # failed and stopped trials do not count: an interrupted command resumes where it was
    budget = plan_search(study_with(done, failed=2, pruned=3), SPACE, None, None)
    assert budget == Budget(n, target, None, n * 3, None)


@pytest.mark.parametrize(("done", "trials"), [(0, 1), (3, 4), (6, 0)])
def test_search_with_trials_adds_that_many_completed(done: int, trials: int) -> None:
    budget = plan_search(study_with(done, failed=1), SPACE, trials, 12.5)
    assert budget == Budget(trials, done + trials, None, trials * 3, 12.5)


def test_worker_with_trials_counts_only_its_own() -> None:
    assert plan_worker(study_with(9), SPACE, 2, None) == Budget(2, None, 2, 6, None)


@pytest.mark.parametrize(("stored", "done", "n", "target"), [(None, 3, 2, 5), (8, 3, 5, 8), (8, 8, 0, 8), (8, 9, 0, 9)])
def test_worker_without_trials_completes_the_stored_budget(stored: int | None, done: int, n: int, target: int) -> None:
    study = study_with(done, failed=1, pruned=1)
    if stored is not None:
        study.set_user_attr(BUDGET_ATTR, stored)
    assert plan_worker(study, SPACE, None, None) == Budget(n, target, None, n * 3, None)


class Stoppable:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def frozen(state: Any) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=state, values=[1.0] if state == STATES.COMPLETE else None)


def test_failure_cap_stops_at_exactly_the_limit_and_counts_only_failures() -> None:
    cap, study = _FailureCap(2), Stoppable()
    for state in (STATES.COMPLETE, STATES.PRUNED, STATES.FAIL, STATES.COMPLETE, STATES.PRUNED):
        cap(study, frozen(state))  # type: ignore[arg-type]
    assert study.stops == 0  # one failure of two
    cap(study, frozen(STATES.FAIL))  # type: ignore[arg-type]
    assert study.stops == 1


def test_own_limit_stops_at_exactly_the_limit_and_counts_only_completed() -> None:
    limit, study = _OwnCompletedLimit(2), Stoppable()
    for state in (STATES.FAIL, STATES.PRUNED, STATES.COMPLETE, STATES.FAIL):
        limit(study, frozen(state))  # type: ignore[arg-type]
    assert study.stops == 0
    limit(study, frozen(STATES.COMPLETE))  # type: ignore[arg-type]
    assert study.stops == 1


class Quiet:
    def message(self, text: str) -> None:
        pass


def test_ray_searcher_finishes_at_the_target_and_the_failure_cap_and_waits_for_running_trials() -> None:
    pytest.importorskip("ray.tune")
    import time

    from ray.tune.search import Searcher

    from vae_automl.backends.ray import _make_searcher_class

    def searcher(**changes: Any) -> Any:
        s = _make_searcher_class()(metric=["a"], mode=["min"], objectives=("a",), target_completed=3, done=2,
                                   max_failures=2, deadline=None, progress=Quiet())
        s.in_flight = {"running": object()}  # 2 completed + 1 running reach the target: wait rather than sample
        for key, value in changes.items():
            setattr(s, key, value)
        return s

    assert searcher().suggest("t") is None
    assert searcher(completed=3).suggest("t") == Searcher.FINISHED  # the target reached exactly
    assert searcher(completed=4).suggest("t") == Searcher.FINISHED
    assert searcher(failed=1).suggest("t") is None  # one failure below the cap
    assert searcher(failed=2).suggest("t") == Searcher.FINISHED  # the cap reached exactly
    assert searcher(found_feasible=True).suggest("t") == Searcher.FINISHED
    assert searcher(deadline=time.monotonic() - 1).suggest("t") == Searcher.FINISHED
    assert searcher(deadline=time.monotonic() + 600).suggest("t") is None
    # nothing running and one trial short: it samples (no space here, so Ray's own error shows it tried)
    with pytest.raises(RuntimeError, match="no search space has been defined"):
        searcher(in_flight={}).suggest("t")


def test_exhausted_only_when_repeats_spent_the_attempts_short_of_the_trials_asked() -> None:
    from vae_automl.study import Budget, exhausted

    budget = Budget(n_trials=4, target_completed=4, own_limit=None, max_attempts=12, timeout_s=None)
    why = exhausted(budget, completed=2, repeats=10, failed=2)  # the attempts cap reached exactly, 2 short
    assert why is not None and "completed 2 of the 4 trials asked" in why and "10 draws repeated" in why
    assert "sampler: {repeats: true}" in why
    assert exhausted(budget, completed=4, repeats=12, failed=0) is None  # every trial asked completed
    assert exhausted(budget, completed=2, repeats=9, failed=2) is None  # one attempt left: stopped by something else
    assert exhausted(budget, completed=2, repeats=0, failed=12) is None  # failures alone: not the space's fault
    assert exhausted(budget, completed=3, repeats=1, failed=11) is not None


def test_failure_cap_counts_repeats_apart() -> None:
    from vae_automl.backends.base import DUPLICATE_ATTR

    cap, study = _FailureCap(3), Stoppable()
    repeat = optuna.trial.create_trial(state=STATES.PRUNED, user_attrs={DUPLICATE_ATTR: 0})
    for trial in (frozen(STATES.FAIL), repeat, frozen(STATES.PRUNED)):
        cap(study, trial)  # type: ignore[arg-type]
    assert (cap.failed, cap.repeats, study.stops) == (2, 1, 0)
