"""TrialRecord: the one typed way a trial's record is written to and read from the study."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest

from vae_automl.record import RECORD_ATTR, BaseInfo, LatencyInfo, TrialRecord


def stored_record(**changes: Any) -> dict[str, Any]:
    """A record dict as 0.1 stored it (the layout studies on disk have)."""
    record = {
        "trial": 3, "params": {"mlp.hidden_width": 16}, "config": {"seed": 0, "pipeline": []},
        "model_config": {"architecture": "mlp"}, "objectives": {"size_bytes": 1200.0},
        "metrics": {"size_bytes": 1200.0, "params": 40.0}, "data": {"dataset": "digits", "split_sha256": "ab"},
        "device": "cpu", "latency": {"batch_size": 128, "target": "cpu", "repeats": 30, "runtime": "torch"},
        "base": {"cache_key": "k", "params": 40, "epochs_run": 2, "stopped_early": False, "train_seconds": 0.5,
                 "samples_per_s": 100.0, "captured": False, "validation_curve": [9.0, 8.5], "cache_hit": True},
        "artifact": "/runs/x/models/trial-3.safetensors", "artifact_sha256": "0" * 64, "seconds": 1.5,
    }
    record.update(changes)
    return record


def test_stored_dict_round_trips_unchanged() -> None:
    data = stored_record()
    record = TrialRecord.from_dict(data)
    assert isinstance(record.base, BaseInfo) and isinstance(record.latency, LatencyInfo)
    assert record.base.validation_curve == [9.0, 8.5] and record.latency.runtime == "torch"
    assert record.as_dict() == data
    assert json.loads(json.dumps(record.as_dict())) == data


def test_keys_of_a_newer_version_survive_a_round_trip() -> None:
    data = stored_record(energy_joules={"inference": 0.2})
    data["base"]["compiled"] = True
    record = TrialRecord.from_dict(data)
    assert record.extra == {"energy_joules": {"inference": 0.2}} and record.base.extra == {"compiled": True}
    assert record.as_dict() == data


def test_a_record_missing_a_field_is_refused_naming_it() -> None:
    data = stored_record()
    del data["artifact_sha256"]
    with pytest.raises(ValueError, match="TrialRecord lacks artifact_sha256"):
        TrialRecord.from_dict(data)


def test_user_attrs_and_from_trial_round_trip() -> None:
    record = TrialRecord.from_dict(stored_record())
    attrs = record.to_user_attrs()
    assert attrs == {RECORD_ATTR: stored_record(), "metrics": record.metrics, "validation_curve": [9.0, 8.5],
                     "base_params": 40, "metric_size_bytes": 1200.0, "metric_params": 40.0}
    study = optuna.create_study(directions=["minimize"])
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [1200.0])
    frozen = study.trials[0]
    assert TrialRecord.from_trial(frozen) == record
    bare = study.ask()
    study.tell(bare, [1.0])
    assert TrialRecord.from_trial(study.trials[1]) is None


def test_dict_access_of_plugins_written_for_0_1() -> None:
    record = TrialRecord.from_dict(stored_record())
    assert record["trial"] == 3 and record["base"]["params"] == 40 and record.get("nope", 7) == 7
    with pytest.raises(KeyError):
        record["nope"]
    assert record.pipeline == []


def test_dict_access_names_the_missing_key_and_reads_the_asked_one() -> None:
    record = TrialRecord.from_dict(stored_record())
    with pytest.raises(KeyError, match="nope"):
        record["nope"]
    assert record.get("trial") == 3 and record.get("seconds") == record["seconds"]


def test_a_stored_key_named_extra_is_kept_as_unknown_data() -> None:
    # a newer version's field called "extra" is data like any other unknown key, not this version's extra
    stored = stored_record(extra={"a": 1})
    record = TrialRecord.from_dict(stored)
    assert record.extra == {"extra": {"a": 1}}
    assert record.as_dict() == stored
