"""front_of_study's bulk path on RDB storages: the same front, params and records as reading every trial."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from vae_automl import study as study_mod
from vae_automl.record import RECORD_ATTR

DIRECTIONS = ["minimize", "maximize"]


def brute_force_front(values: dict[int, list[float]]) -> set[int]:
    """Trial numbers no other trial dominates (first objective minimized, second maximized), every pair compared."""
    signed = {n: (v[0], -v[1]) for n, v in values.items()}
    return {
        n for n, a in signed.items()
        if not any(all(y <= x for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b)) for m, b in signed.items() if m != n)
    }  # fmt: skip


@pytest.fixture
def mixed_study(tmp_path: Path) -> optuna.Study:
    """300 trials on SQLite: completed ones with ties, duplicates and an infinite value, failed and running ones."""
    study = optuna.create_study(study_name="bulk", storage=f"sqlite:///{tmp_path / 'study.db'}", directions=DIRECTIONS)
    study.set_user_attr(study_mod.OBJECTIVES_ATTR, ["loss", "score"])
    rng = random.Random(3)
    distributions = {"a": optuna.distributions.FloatDistribution(0, 1),
                     "k": optuna.distributions.CategoricalDistribution(["x", "y", "z"])}  # fmt: skip
    trials = []
    for number in range(300):
        params = {"a": rng.random(), "k": rng.choice(["x", "y", "z"])}
        values = [float(rng.randint(0, 30)), float(rng.randint(0, 30))]  # a small grid: ties and duplicates
        if number == 7:
            values = [float("-inf"), 0.0]  # beats every loss
        state = optuna.trial.TrialState.COMPLETE
        if number % 10 == 3:
            state, values = optuna.trial.TrialState.FAIL, None
        record = {"trial": number, "marker": f"record of {number}"}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions, values=values, state=state,
                                                user_attrs={RECORD_ATTR: record} if values else {}))
    study.add_trials(trials)
    study.enqueue_trial({"a": 0.5, "k": "x"})
    study.ask()  # one RUNNING trial, which has no values
    return study


def test_bulk_front_equals_brute_force_and_the_trials_it_names(mixed_study: optuna.Study,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert study_mod._rdb_backend(mixed_study) is not None
    completed = {t.number: t for t in mixed_study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    monkeypatch.setattr(study_mod.TrialRecord, "from_dict", classmethod(lambda cls, data: data))
    front = study_mod.front_of_study(mixed_study)
    assert {e.trial for e in front} == brute_force_front({n: t.values for n, t in completed.items()})
    assert front[0].trial == 7 and front[0].objectives == {"loss": float("-inf"), "score": 0.0}
    for entry in front:
        trial = completed[entry.trial]
        assert entry.params == trial.params
        assert entry.objectives == dict(zip(["loss", "score"], trial.values))
        assert entry.record == {"trial": entry.trial, "marker": f"record of {entry.trial}"}
    losses = [e.objectives["loss"] for e in front]
    assert losses == sorted(losses)
    # the path for other storages reads every trial; both give the same front
    monkeypatch.setattr(study_mod, "_rdb_backend", lambda study: None)
    assert [e.as_dict() for e in study_mod.front_of_study(mixed_study)] == [e.as_dict() for e in front]
