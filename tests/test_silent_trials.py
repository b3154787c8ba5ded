"""A trial whose process died before its first heartbeat is failed and retried, not left RUNNING for ever."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from vae_automl import study as study_mod


def test_a_trial_that_never_beat_is_failed_and_retried_after_the_grace_period(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(study_mod.HEARTBEAT_INTERVAL_ENV, "1")
    monkeypatch.setenv(study_mod.HEARTBEAT_GRACE_ENV, "1")
    storage = study_mod.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="silent", storage=storage, directions=["minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    silent = study.ask(dist)  # its process is "killed" before any heartbeat
    beating = study.ask(dist)
    study_mod.fail_stale_trials(study)
    assert study.trials[silent.number].state == optuna.trial.TrialState.RUNNING  # within the grace period
    time.sleep(1.5)
    storage.record_heartbeat(beating._trial_id)  # alive: it beats
    study_mod.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert trials[silent.number].state == optuna.trial.TrialState.FAIL
    assert trials[beating.number].state == optuna.trial.TrialState.RUNNING
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == silent.number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.WAITING
    assert retries[0].params == silent.params


def test_a_worker_whose_running_trial_was_failed_as_stale_drops_it_and_goes_on() -> None:
    """Another process failed this worker's trial as stale while it ran: Optuna refuses its result from inside
    optimize (ValueError: Cannot tell a FAIL trial); the worker must warn and run on, not crash."""
    from vae_automl.backends.optuna import optimize_past_stale_failures

    study = optuna.create_study(directions=["minimize", "minimize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:  # what fail_stale_trials in another process does to a late heartbeat
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return x, 1 - x

    stop = optuna.study.MaxTrialsCallback(2, states=(optuna.trial.TrialState.COMPLETE,))
    with pytest.warns(UserWarning, match="failed this worker's running trial as stale"):
        optimize_past_stale_failures(study, objective, deadline=None, callbacks=[stop])
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
