"""Optuna workers: a study created with --trials 0, then worker processes sharing it on PostgreSQL or a journal file."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl.cli import main
from vae_automl.errors import ConfigError
from vae_automl.study import OUT_DIR_ATTR, RECORD_ATTR, SPACE_ATTR, open_study
from vae_automl.worker import WORKER_ATTR, run_worker

CLI = str(Path(sys.executable).parent / "vae-automl")
COMPLETE = optuna.trial.TrialState.COMPLETE


def test_trials_zero_creates_the_study_and_a_worker_runs_it(tiny_space: Any, tmp_path: Path) -> None:
    space_file = tiny_space(max_epochs=1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["search", str(space_file), "--n-trials", "0", "--out", str(tmp_path / "out"), "--storage", storage]) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.trials == []
    assert study.user_attrs[SPACE_ATTR] == space_file.read_text()
    assert study.user_attrs[OUT_DIR_ATTR] == str((tmp_path / "out").resolve())
    # the worker needs no YAML file: the space comes from the study; --out overrides the stored folder
    result = run_worker(storage, "tiny", trials=1, out_dir=tmp_path / "elsewhere", show_progress=False)
    assert result.completed == 1
    (trial,) = result.study.get_trials(states=(COMPLETE,))
    assert trial.user_attrs[WORKER_ATTR] == result.worker
    assert Path(trial.user_attrs[RECORD_ATTR]["artifact"]).parent == (tmp_path / "elsewhere" / "models").resolve()


def test_worker_on_a_study_without_a_space_is_a_clear_error(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="bare", storage=storage)
    with pytest.raises(ConfigError, match="stores no search space.*--n-trials 0"):
        run_worker(storage, "bare", show_progress=False)
    with pytest.raises(ConfigError, match="no study 'missing'.*bare"):
        run_worker(storage, "missing", show_progress=False)


def run_two_workers(storage: str, name: str, timeout_s: float = 500) -> list[str]:
    command = [CLI, "worker", "--storage", storage, "--study", name]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout_s)
            outputs.append(out.decode())
            assert proc.returncode == 0, outputs[-1][-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def check_shared_study(storage: str, name: str, budget: int) -> None:
    done = open_study(storage, name).get_trials(states=(COMPLETE,))
    # each worker stops starting trials at the budget; the other's in-flight trial may still complete
    assert budget <= len(done) <= budget + 1
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs[WORKER_ATTR] for t in done}) == 2, "both workers should have completed trials"
    for t in done:
        assert Path(t.user_attrs[RECORD_ATTR]["artifact"]).is_file()


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(postgres_url: str, tiny_space: Any, tmp_path: Path) -> None:
    name = f"pg-{int(time.time() * 1000)}"
    budget = 6
    space_file = tiny_space(name=name, trials=budget)
    assert main(["search", str(space_file), "--n-trials", "0", "--out", str(tmp_path), "--storage", postgres_url]) == 0
    run_two_workers(postgres_url, name)
    check_shared_study(postgres_url, name, budget)
    assert main(["front", "--storage", postgres_url, "--study", name]) == 0


@pytest.mark.slow
def test_two_workers_share_a_journal_file(tiny_space: Any, tmp_path: Path) -> None:
    budget = 6
    space_file = tiny_space(trials=budget)
    storage = f"journal:{tmp_path / 'study.log'}"
    assert main(["search", str(space_file), "--n-trials", "0", "--out", str(tmp_path), "--storage", storage]) == 0
    outputs = run_two_workers(storage, "tiny")
    assert "journal storage has no heartbeats" in outputs[0]
    check_shared_study(storage, "tiny", budget)


def test_a_search_on_a_journal_storage_warns_that_killed_trials_stay_running(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.api import search

    space = tiny_space(trials=1, max_epochs=1)
    with pytest.warns(UserWarning, match="journal storage has no heartbeats: a trial whose worker or Ray driver is killed"):
        search(space, storage=f"journal:{tmp_path / 'j.log'}", out_dir=tmp_path / "j", show_progress=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        search(space, storage=f"sqlite:///{tmp_path / 's.db'}", out_dir=tmp_path / "s", show_progress=False)
    assert not [w for w in seen if "no heartbeats" in str(w.message)]  # an RDB storage beats: no such warning
