"""The one-query helpers on RDB storages (duplicate check, completed count and values) against reading every trial."""

from __future__ import annotations

import optuna
import pytest

from vae_automl import study as study_mod
from vae_automl.backends.base import duplicate_of

F = optuna.distributions.FloatDistribution(0.0, 1.0)
C = optuna.distributions.CategoricalDistribution(["a", "b", None])
N = optuna.distributions.IntDistribution(1, 8, log=True)


def _add(study: optuna.Study, params: dict, state: optuna.trial.TrialState) -> int:
    dists = {"x": F, "c": C, "n": N}
    trial = optuna.trial.create_trial(
        params=params,
        distributions={k: dists[k] for k in params},
        values=[1.0] if state == optuna.trial.TrialState.COMPLETE else None,
        state=state,
    )
    study.add_trial(trial)
    return len(study.trials) - 1


@pytest.fixture
def study(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="d")
    S = optuna.trial.TrialState
    _add(study, {"x": 0.25, "c": "a", "n": 4}, S.COMPLETE)  # 0
    _add(study, {"x": 0.5, "c": None}, S.COMPLETE)  # 1: fewer params
    _add(study, {"x": 0.75, "c": "b", "n": 2}, S.FAIL)  # 2: failed: not a copy to avoid
    _add(study, {"x": 0.125, "c": "b", "n": 8}, S.RUNNING)  # 3: running counts
    _add(study, {"x": 0.5, "c": None, "n": 1}, S.PRUNED)  # 4
    return study


CASES = [
    {"x": 0.25, "c": "a", "n": 4},  # copy of 0
    {"x": 0.25, "c": "a", "n": 2},  # one value differs
    {"x": 0.25 + 1e-12, "c": "a", "n": 4},  # a float a hair away is not a copy
    {"x": 0.5, "c": None},  # copy of 1 (None choice)
    {"x": 0.5, "c": None, "n": 1},  # 1 has fewer params; 4 is pruned
    {"x": 0.5},  # a subset of 1's params is not a copy
    {"x": 0.75, "c": "b", "n": 2},  # only a failed trial has it
    {"x": 0.125, "c": "b", "n": 8},  # copy of the running 3
    {},
]


@pytest.mark.parametrize("params", CASES)
def test_one_query_finds_what_reading_every_trial_finds(study, params):
    dists = {"x": F, "c": C, "n": N}
    slow = duplicate_of(study, 99, params)
    fast = study_mod.rdb_duplicate_of(study, 99, params, {k: dists[k] for k in params})
    assert fast is not study_mod.NOT_RDB
    assert fast == slow
    assert duplicate_of(study, 99, params, {k: dists[k] for k in params}) == slow


def test_expected_copies_and_own_number_excluded(study):
    dists = {"x": F, "c": C, "n": N}
    assert study_mod.rdb_duplicate_of(study, 99, CASES[0], dists) == 0
    assert study_mod.rdb_duplicate_of(study, 0, CASES[0], dists) is None  # a trial is not its own copy
    assert study_mod.rdb_duplicate_of(study, 99, CASES[7], dists) == 3


def test_count_completed_counts_complete_only(study, tmp_path):
    assert study_mod.count_completed(study) == 2
    journal = optuna.create_study(storage=study_mod.open_storage(f"journal:{tmp_path / 'j.log'}"), study_name="j")
    _add(journal, {"x": 0.1}, optuna.trial.TrialState.COMPLETE)
    _add(journal, {"x": 0.2}, optuna.trial.TrialState.FAIL)
    assert study_mod.rdb_duplicate_of(journal, 9, {"x": 0.1}, {"x": F}) is study_mod.NOT_RDB
    assert study_mod.count_completed(journal) == 1


def test_completed_values_and_the_progress_front_match_reading_every_trial(tmp_path):
    from vae_automl.backends.base import observe_study
    from vae_automl.progress import Progress

    for storage in (f"sqlite:///{tmp_path / 'v.db'}", study_mod.open_storage(f"journal:{tmp_path / 'v.log'}")):
        study = optuna.create_study(storage=storage, study_name="v", directions=["minimize", "maximize"])
        points = [(1.0, 1.0), (2.0, 3.0), (0.5, 0.5), (2.0, 3.0), (3.0, 2.0), (float("inf"), 9.0)]
        for i, (a, b) in enumerate(points):
            trial = study.ask()
            if i == 4:  # a failed trial: not counted
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, [a, b])
        study.ask()  # a running one: not counted either
        expected = {t.number: list(t.values) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
        assert study_mod.completed_values(study) == expected
        progress = Progress(None, ("a", "b"), ("minimize", "maximize"), enabled=False)
        assert observe_study(study, progress) == len(study_mod.front_of_study(study)) == 5  # each higher a buys a higher b; 2/3 twice
        assert progress.best == {"a": (0.5, 2), "b": (9.0, 5)}
