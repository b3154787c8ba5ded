"""Reading a finished or running study: completed trials, their records, the Pareto front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from vae_automl import pareto
from vae_automl.errors import ConfigError
from vae_automl.record import RECORD_ATTR, TrialRecord

SPACE_ATTR = "vae_automl_space"
SPACE_FILE_ATTR = "vae_automl_space_file"
OBJECTIVES_ATTR = "vae_automl_objectives"
OUT_DIR_ATTR = "vae_automl_out_dir"
BUDGET_ATTR = "vae_automl_trial_budget"
BASE_MODEL_ATTR = "vae_automl_base_model"
"""``{factory, checkpoint_sha256}`` of a study started from a user's model."""
BASELINE_ATTR = "vae_automl_baseline"
"""The user's model as given, measured with the study's objectives: ``{objectives, metrics}``."""
PLUGINS_ATTR = "vae_automl_plugins"
"""Every plugin a trial of the study used: ``{plugin: {distribution, version, module}}``."""
FAILURE_ATTR = "failure_reason"


@dataclass
class FrontEntry:
    trial: int
    params: dict[str, Any]
    objectives: dict[str, float]
    record: TrialRecord | None
    """None for a trial stored without a record (by another tool)."""

    def as_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "params": self.params, "objectives": self.objectives}


def open_study(storage: Any, study_name: str) -> optuna.Study:
    from vae_automl.backends.optuna import open_storage

    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
        raise ConfigError(f"no study {study_name!r} in {storage}; studies there: {', '.join(names) or '(none)'}") from None


def check_base_model(study: optuna.Study, factory: str | None, checkpoint_sha256: str | None) -> None:
    """Record the study's base model, or refuse one whose checkpoint differs from the one the study was started with."""
    stored = study.user_attrs.get(BASE_MODEL_ATTR)
    if stored is None:
        study.set_user_attr(BASE_MODEL_ATTR, {"factory": factory, "checkpoint_sha256": checkpoint_sha256})
    elif stored.get("checkpoint_sha256") != checkpoint_sha256:
        raise ConfigError(f"study {study.study_name!r} was started from base_model checkpoint sha256 "
                          f"{stored.get('checkpoint_sha256')} ({stored.get('factory')}), but this one is "
                          f"{checkpoint_sha256} ({factory}); its trials would not be comparable: use another --study name")


def add_plugins(study: optuna.Study, plugins: dict[str, dict[str, str]]) -> None:
    """Merge a trial's plugins into the study's :data:`PLUGINS_ATTR` (provenance of the whole study)."""
    known = dict(study.user_attrs.get(PLUGINS_ATTR, {}))
    if any(name not in known for name in plugins):
        study.set_user_attr(PLUGINS_ATTR, {**known, **plugins})


def objectives_of(study: optuna.Study) -> tuple[list[str], list[str]]:
    names = study.user_attrs.get(OBJECTIVES_ATTR)
    if names is None:
        names = [f"objective{i}" for i in range(len(study.directions))]
    directions = ["minimize" if d == optuna.study.StudyDirection.MINIMIZE else "maximize" for d in study.directions]
    return list(names), directions


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def front_of_study(study: optuna.Study) -> list[FrontEntry]:
    """The non-dominated completed trials, ordered by the first objective."""
    names, directions = objectives_of(study)
    trials = completed_trials(study)
    if not trials:
        return []
    indices = pareto.non_dominated([t.values for t in trials], directions)
    entries = [
        FrontEntry(trials[i].number, dict(trials[i].params), dict(zip(names, trials[i].values)),
                   TrialRecord.from_trial(trials[i]))
        for i in indices
    ]
    return sorted(entries, key=lambda e: e.objectives[names[0]] * (1 if directions[0] == "minimize" else -1))


def load_front(storage: Any, study_name: str) -> list[FrontEntry]:
    """The Pareto front of a stored study (either backend)."""
    return front_of_study(open_study(storage, study_name))
