"""Faults, each real: a diverging trial, a trial over its time limit, a worker killed mid-trial, an interrupted driver."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from vae_automl.registry import get_registry
from vae_automl.study import HEARTBEAT_GRACE_ENV, HEARTBEAT_INTERVAL_ENV, create_study
from vae_automl.config import load_space
from vae_automl.api import search
from vae_automl.plugin_manager import EXTRA_PLUGINS_ENV
from vae_automl.study import FAILURE_ATTR
from vae_automl.worker import WORKER_ATTR

from conftest import held_marker, interrupt_when_held, write_hold_plugin

CLI = str(Path(sys.executable).parent / "vae-automl")
STATES = optuna.trial.TrialState


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, procs: tuple[subprocess.Popen, ...] = ()) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"process {proc.args} exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_diverging_trial_fails_with_reason_and_study_goes_on(tiny_space: Any, tmp_path: Path) -> None:
    space_file = tiny_space(trials=1, lr="{choices: [0.003, 1.0]}")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(load_space(space_file), storage, "tiny", tmp_path, get_registry())
    # Adam at lr 1 sends this model's loss to NaN in its first epoch
    study.enqueue_trial({"training.lr": 1.0, "mlp.hidden_width": 8, "mlp.latent_dim": 6, "training.epochs": 2})
    study.enqueue_trial({"training.lr": 0.003, "training.epochs": 1})
    result = search(space_file, trials=1, storage=storage, out_dir=tmp_path, show_progress=False)
    trials = trials_of(storage, "tiny")
    assert [t.state for t in trials] == [STATES.FAIL, STATES.COMPLETE]
    assert "diverged" in trials[0].user_attrs[FAILURE_ATTR]
    assert result.completed == 1 and result.front[0].trial == 1


def test_time_limit_stops_a_long_trial(tiny_space: Any, tmp_path: Path) -> None:
    # 400 epochs would take minutes; the 0.5 s limit must stop it in its first epochs
    space_file = tiny_space(trials=1, max_epochs=400, extra_training="  max_seconds: 0.5\n")
    space_file.write_text(space_file.read_text().replace("epochs: {low: 1, high: 400}", "epochs: 400"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(space_file, trials=1, storage=storage, out_dir=tmp_path, show_progress=False)
    trials = trials_of(storage, "tiny")
    assert result.completed == 0 and trials and all(t.state == STATES.FAIL for t in trials)
    reason = trials[0].user_attrs[FAILURE_ATTR]
    match = re.search(r"time limit of 0.5 s \(epoch (\d+)\)", reason)
    assert match, reason
    assert int(match.group(1)) < 400


@pytest.mark.slow
def test_worker_killed_mid_trial_is_failed_and_retried(postgres_url: str, tiny_space: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"kill-{os.getpid()}-{int(time.time())}"
    budget = 6
    plugin_dir = tmp_path / "plugins"
    hold = write_hold_plugin(plugin_dir)
    monkeypatch.syspath_prepend(str(plugin_dir))
    space_file = tiny_space(name=name, trials=budget, compressors="[hold]")
    search(space_file, trials=0, storage=postgres_url, out_dir=tmp_path / "out", show_progress=False,
           plugins=("hold_plugin",))
    grace_s = 4
    env = {**os.environ, HEARTBEAT_INTERVAL_ENV: "1", HEARTBEAT_GRACE_ENV: str(grace_s),
           "PYTHONPATH": str(plugin_dir), EXTRA_PLUGINS_ENV: "hold_plugin"}
    worker = [CLI, "worker", "--storage", postgres_url, "--study", name]
    hold.write_text("1")  # one trial completes, the next is held
    victim = subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    others: list[subprocess.Popen] = []
    try:
        host_pid = re.compile(rf":{victim.pid}$")
        wait_for(held_marker(hold).exists, 300, "a trial of the victim worker held mid-run", (victim,))
        running = [t for t in trials_of(postgres_url, name) if t.state == STATES.RUNNING]
        assert len(running) == 1 and host_pid.search(running[0].user_attrs.get(WORKER_ATTR, ""))
        killed = running[0]
        before = {t.number: t.values for t in trials_of(postgres_url, name) if t.state == STATES.COMPLETE}
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        hold.unlink()
        # workers starting after the grace period find the trial stale, fail it and run its retry first
        time.sleep(grace_s + 2)
        others = [subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        for proc in others:
            out, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, out.decode()[-3000:]
    finally:
        hold.unlink(missing_ok=True)
        for proc in (victim, *others):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    trials = {t.number: t for t in trials_of(postgres_url, name)}
    assert trials[killed.number].state == STATES.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == STATES.COMPLETE
    assert retries[0].params == killed.params
    assert sum(t.state == STATES.COMPLETE for t in trials.values()) >= budget
    assert all(trials[n].state == STATES.COMPLETE and trials[n].values == v for n, v in before.items())
    assert not [t.number for t in trials.values() if t.state == STATES.RUNNING]


@pytest.mark.slow
def test_interrupted_driver_resumes_to_budget(tiny_space: Any, tmp_path: Path) -> None:
    budget = 6
    plugin_dir = tmp_path / "plugins"
    hold = write_hold_plugin(plugin_dir)
    space_file = tiny_space(trials=budget, compressors="[hold]")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [CLI, "search", str(space_file), "--out", str(tmp_path), "--storage", storage, "--plugin", "hold_plugin"]
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    hold.write_text("1")  # one trial completes, the next is held
    returncode, err = interrupt_when_held(command, env, hold)
    assert returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    first = trials_of(storage, "tiny")
    kept = {t.number: t.values for t in first if t.state == STATES.COMPLETE}
    assert len(kept) == 1
    assert first[-1].state == STATES.FAIL  # the interrupted trial is not left RUNNING
    rerun = subprocess.run(command, env=env, capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    after = trials_of(storage, "tiny")
    assert sum(t.state == STATES.COMPLETE for t in after) == budget
    assert all(after[n].values == v for n, v in kept.items())
