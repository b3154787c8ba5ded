"""Experiment tracking: every trial's parameters and metrics reach TensorBoard event files and a local MLflow store."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

import vae_automl
from vae_automl.cli import main
from vae_automl.tracking import MLflowCallback, TensorBoardCallback


def read_events(folder: Path) -> list[Any]:
    """Every Event in a folder's event files, read frame by frame (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def scalars(folder: Path) -> dict[tuple[str, int], float]:
    return {(v.tag, e.step): v.simple_value for e in read_events(folder) for v in e.summary.value
            if v.WhichOneof("value") == "simple_value"}


def hparams_of(folder: Path) -> dict[str, Any]:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for event in read_events(folder):
        for value in event.summary.value:
            if value.tag == "_hparams_/session_start_info":
                info = HParamsPluginData.FromString(value.metadata.plugin_data.content).session_start_info
                return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    raise AssertionError(f"no hparams in {folder}")


def mlflow_runs(db: Path, study: str) -> dict[str, dict[str, Any]]:
    """MLflow's SQLite store read with sqlite3: {trial tag: {params, metrics, tags}} of one study's runs."""
    with sqlite3.connect(db) as conn:
        def table(name: str) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for run, key, value in conn.execute(f"SELECT run_uuid, key, value FROM {name}"):
                out.setdefault(run, {})[key] = value
            return out

        tags, params, metrics = table("tags"), table("params"), table("latest_metrics")
    return {t["optuna.trial"]: {"tags": t, "params": params.get(run, {}), "metrics": metrics.get(run, {})}
            for run, t in tags.items() if t["optuna.study"] == study}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two one-epoch trials with both trackers, given through the Python API's callbacks."""
    from conftest import TINY_SPACE

    root = tmp_path_factory.mktemp("tracked")
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="tracked", trials=2, lr="3.0e-3", max_epochs=1, seed=0, pruner="none",
                                       extra_training="", compressors="[]"))
    tensorboard = TensorBoardCallback(root / "tb")
    result = vae_automl.search(space, trials=2, out_dir=root / "run", show_progress=False,
                               callbacks=[tensorboard, MLflowCallback(f"sqlite:///{root / 'mlflow.db'}")])
    tensorboard.close()
    return {"root": root, "study": result.study, "space": space}


def test_tensorboard_gets_every_trials_params_and_metrics(tracked: dict[str, Any]) -> None:
    root, study = tracked["root"], tracked["study"]
    top = scalars(root / "tb")
    assert len(study.trials) == 2  # the fixture's two trials: the loop below must see both
    for trial in study.trials:
        metrics = trial.user_attrs["metrics"]
        assert top[("objective/test_elbo_nats", trial.number)] == pytest.approx(trial.values[0], rel=1e-6)
        assert top[("metric/latency_ms", trial.number)] == pytest.approx(metrics["latency_ms"], rel=1e-6)
        run = scalars(root / "tb" / f"trial-{trial.number}")
        assert {tag for tag, _ in run} >= {"test_elbo_nats", "size_bytes", "latency_ms", "recon_error"}
        assert run[("recon_error", trial.number)] == pytest.approx(metrics["recon_error"], rel=1e-6)
        assert hparams_of(root / "tb" / f"trial-{trial.number}") == pytest.approx(trial.params)


def test_mlflow_store_gets_every_trials_params_and_metrics(tracked: dict[str, Any]) -> None:
    root, study = tracked["root"], tracked["study"]
    runs = mlflow_runs(root / "mlflow.db", "tracked")
    assert sorted(runs) == [str(t.number) for t in study.trials] and len(runs) == 2
    for trial in study.trials:
        run = runs[str(trial.number)]
        assert run["tags"]["optuna.state"] == "COMPLETE" and run["tags"]["mlflow.runName"] == f"trial-{trial.number}"
        assert run["params"] == {k: str(v) for k, v in trial.params.items()}
        assert run["metrics"]["test_elbo_nats"] == pytest.approx(trial.values[0])
        assert run["metrics"]["size_bytes"] == trial.values[1]
        for name, value in trial.user_attrs["metrics"].items():
            assert run["metrics"][name] == pytest.approx(value), name


def test_mlflow_logs_pruned_and_failed_trials_with_their_state(tracked: dict[str, Any]) -> None:
    db = tracked["root"] / "mlflow.db"  # the fixture's store: a new one costs seconds of schema migrations
    study = optuna.create_study(study_name="states", directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"x": 1},
                                              distributions={"x": optuna.distributions.IntDistribution(0, 3)}))
    callback = MLflowCallback(f"sqlite:///{db}", experiment="other-name")
    callback(study, study.trials[0])
    (run,) = mlflow_runs(db, "states").values()
    assert run["tags"]["optuna.state"] == "FAIL" and run["params"] == {"x": "1"} and run["metrics"] == {}


def test_the_cli_takes_tensorboard_and_mlflow(tracked: dict[str, Any], tmp_path: Path) -> None:
    out, db = tmp_path / "run", tracked["root"] / "mlflow.db"
    assert main(["search", str(tracked["space"]), "--n-trials", "1", "--out", str(out), "--study", "cli",
                 "--tensorboard", str(tmp_path / "tb"), "--mlflow", f"sqlite:///{db}"]) == 0
    assert ("objective/size_bytes", 0) in scalars(tmp_path / "tb")
    assert list(mlflow_runs(db, "cli")) == ["0"]


def test_mlflow_info_lines_stay_quiet_unless_verbose(tmp_path: Path) -> None:
    """A new store's "INFO mlflow.store.db.utils: Creating initial MLflow database tables" shows only with -v."""
    script = f"""
import logging, sys
from vae_automl.tracking import MLflowCallback
mlflow_logger = logging.getLogger("mlflow")
MLflowCallback("sqlite:///{tmp_path / 'quiet.db'}")
print("QUIET DONE", file=sys.stderr, flush=True)
before = mlflow_logger.level
MLflowCallback("sqlite:///{tmp_path / 'loud.db'}", verbose=True)
print("LEVEL KEPT", mlflow_logger.level == before, file=sys.stderr, flush=True)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    quiet, loud = result.stderr.split("QUIET DONE")
    assert "INFO" not in quiet, quiet  # nothing of MLflow's own between our progress lines
    assert "INFO mlflow" in loud and "Creating initial MLflow database tables" in loud  # the line exists, and -v shows it
    assert "LEVEL KEPT True" in loud  # the caller's logging setting comes back


def test_a_store_mlflow_refuses_is_a_clear_error_before_any_trial(tmp_path: Path) -> None:
    from vae_automl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--mlflow file:.*MLflow cannot use this tracking store"):
        MLflowCallback(f"file:{tmp_path / 'mlruns'}")


def test_the_yamls_tracking_reaches_the_search_and_every_worker(tracked: dict[str, Any], tmp_path: Path) -> None:
    board = tmp_path / "tb"
    space = tmp_path / "tracked.yaml"
    space.write_text(tracked["space"].read_text() + f"tracking: {{tensorboard: {str(board)!r}}}\n")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    vae_automl.search(space, trials=1, storage=storage, out_dir=tmp_path / "run", show_progress=False)
    assert {step for tag, step in scalars(board) if tag == "objective/test_elbo_nats"} == {0}
    # a worker has no YAML of its own: the stored one's tracking applies
    vae_automl.worker(storage, "tracked", trials=1, show_progress=False)
    assert {step for tag, step in scalars(board) if tag == "objective/test_elbo_nats"} == {0, 1}


@pytest.mark.parametrize(("tracking", "message"), [
    ("{tensorboard: 3}", r"tracking\.tensorboard: expected a URI or folder \(a non-empty string\), got 3"),
    ("{wandb: x}", r"tracking\.wandb: unknown key; valid keys: mlflow, tensorboard"),
])
def test_a_bad_tracking_section_is_refused_naming_the_key(tracked: dict[str, Any], tracking: str, message: str) -> None:
    from vae_automl.config import load_space_text
    from vae_automl.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_space_text(tracked["space"].read_text() + f"tracking: {tracking}\n", "tracked.yaml")


def test_two_writers_in_one_folder_in_the_same_second_keep_both_trials(tracked: dict[str, Any], tmp_path: Path) -> None:
    """A search and a worker (or two workers) started together log into one folder; neither overwrites the other."""
    study = tracked["study"]
    first, second = TensorBoardCallback(tmp_path / "tb"), TensorBoardCallback(tmp_path / "tb")
    first(study, study.trials[0])
    second(study, study.trials[1])
    first.close()
    second.close()
    steps = {step for tag, step in scalars(tmp_path / "tb") if tag == "objective/test_elbo_nats"}
    assert steps == {0, 1}
