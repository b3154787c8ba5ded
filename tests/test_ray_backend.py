"""The Ray backend: a real Ray head on 127.0.0.1, the CLI driver connecting with --address, results in the Optuna study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl.backends.ray import ray_init_address
from vae_automl.study import FAILURE_ATTR, RECORD_ATTR

from conftest import interrupt_when_held, write_hold_plugin

CLI = str(Path(sys.executable).parent / "vae-automl")
STATES = optuna.trial.TrialState

PLUGIN = '''

# and marks each trial's artifact with the pid of the process that ran it
import os


@hookimpl
def on_trial_complete(record):
    Path(record["artifact"] + ".ran-by").write_text(str(os.getpid()))
'''


_BASE = {"cache_key": "k", "params": 10, "epochs_run": 2, "stopped_early": False, "train_seconds": 1.0,
         "samples_per_s": 9.0, "captured": False, "validation_curve": [3.0, 2.0], "cache_hit": False}
_LATENCY = {"batch_size": 128, "target": "cpu", "repeats": 30, "runtime": "torch"}
RECORD = {"trial": 0, "params": {}, "config": {"seed": 0}, "model_config": {}, "objectives": {"a": 1.5, "b": 2.0},
          "metrics": {"a": 1.5, "b": 2.0}, "data": {}, "device": "cpu", "latency": _LATENCY, "base": _BASE,
          "artifact": "/x/trial-0.safetensors", "artifact_sha256": "0" * 64, "seconds": 1.0}
"""A complete stored record, as a Ray trial reports it."""


def test_outcome_of_ray_results() -> None:
    from vae_automl.backends.ray import CONFIG_KEY, FAILURE_KEY, RECORD_KEY, VALIDATION_LOSS, _outcome

    record = RECORD
    state, values, attrs = _outcome({RECORD_KEY: json.dumps(record)}, False, ("b", "a"))
    assert state == STATES.COMPLETE and values == [2.0, 1.5] and attrs[RECORD_ATTR] == record
    state, values, attrs = _outcome({FAILURE_KEY: "loss diverged to nan", CONFIG_KEY: '{"seed": 0}'}, False, ("a",))
    assert state == STATES.FAIL and values is None and attrs[FAILURE_ATTR] == "loss diverged to nan"
    assert attrs["config"] == {"seed": 0}
    # stopped by ASHA after an epoch: no objectives, a validation loss
    state, _, attrs = _outcome({VALIDATION_LOSS: 9.0, "epoch": 2, "validation_curve": [10.0, 9.0]}, False, ("a",))
    assert state == STATES.PRUNED and attrs["pruned_at_epoch"] == 2
    state, _, attrs = _outcome({VALIDATION_LOSS: 9.0, "epoch": 2, "rung": "before_fine_tuning"}, False, ("a",))
    assert state == STATES.PRUNED and attrs["pruned_at_epoch"] == "before_fine_tuning"
    state, _, attrs = _outcome(None, True, ("a",))
    assert state == STATES.FAIL and "errored" in attrs[FAILURE_ATTR]


def test_rung_points_are_read_from_the_results_as_tune_flattens_them() -> None:
    flatten_dict = pytest.importorskip("ray.tune.utils").flatten_dict
    from vae_automl.backends.ray import RECORD_KEY, RUNG_KEY, VALIDATION_LOSS, _make_scheduler_class, _outcome, rung_values_of
    from vae_automl.config import PrunerConfig
    from vae_automl.early_stopping import RUNG_VALUES_ATTR

    reported = {VALIDATION_LOSS: 9.0, "epoch": 1, "rung": "1", RUNG_KEY: {"1": [9.0, 100.0]}, "validation_curve": [9.0]}
    flat = flatten_dict(reported)  # what Tune hands schedulers and searchers
    assert RUNG_KEY not in flat  # the case a lookup of the reported key alone misses
    assert rung_values_of(flat) == rung_values_of(reported) == {"1": [9.0, 100.0]}
    _, _, attrs = _outcome(flat, False, ("a",))
    assert attrs[RUNG_VALUES_ATTR] == {"1": [9.0, 100.0]}
    _, _, attrs = _outcome(flatten_dict({RECORD_KEY: json.dumps(RECORD), RUNG_KEY: {"1": [1.0, 5.0]}}), False, ("a",))
    assert attrs[RUNG_VALUES_ATTR] == {"1": [1.0, 5.0]}
    # the scheduler stops a dominated trial from the flattened result: a peer known from the study is better in both
    scheduler = _make_scheduler_class()(PrunerConfig(name="pareto", min_trials=1, reduction_factor=2),
                                        ["minimize", "minimize"], [{"1": [1.0, 100.0]}])
    trial = type("Trial", (), {"trial_id": "t"})()
    assert scheduler.on_trial_result(None, trial, flat) == "STOP"


def completed(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(states=(STATES.COMPLETE,))


@pytest.mark.slow
def test_ray_cluster_search_interrupt_and_resume(ray_head: str, tiny_space: Any, tmp_path: Path) -> None:
    budget = 4
    space_file = tiny_space(trials=budget, pruner="pareto", max_epochs=4, compressors="[hold]")
    hold = write_hold_plugin(tmp_path / "plugin_pkg", "pid_marker", extra=PLUGIN)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    # the head uses token auth; ray_head put its token in this process's RAY_AUTH_TOKEN
    # the plugin package first, then whatever path put the code under test first (a checkout, not an installed copy)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin_pkg"), os.environ.get("PYTHONPATH", "")])}
    command = [CLI, "search", str(space_file), "--backend", "ray", "--address", ray_head, "--concurrency", "2",
               "--cpus-per-trial", "1", "--scheduler", "pareto", "--out", str(out), "--storage", storage,
               "--plugin", "pid_marker"]

    # 1. two trials on the cluster
    first = subprocess.Popen([*command, "--trials", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_out, first_err = first.communicate(timeout=500)
    assert first.returncode == 0, first_err.decode()[-3000:]
    assert "Pareto front of study 'tiny'" in first_out.decode()
    done = completed(storage, "tiny")
    assert len(done) == 2
    for trial in done:
        record = trial.user_attrs[RECORD_ATTR]
        assert record["trial"] == trial.number and Path(record["artifact"]).name == f"trial-{trial.number}.safetensors"
        # the --plugin module was loaded by the Ray worker process, not the driver
        ran_by = Path(record["artifact"] + ".ran-by")
        assert ran_by.is_file() and int(ran_by.read_text()) != first.pid

    # 2. no --trials: complete the budget; interrupt the driver while a trial is held mid-run
    hold.touch()
    returncode, err = interrupt_when_held(command, env, hold)
    assert returncode == 130, err[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert not [t for t in trials if t.state == STATES.RUNNING], "the driver must not leave trials RUNNING"
    interrupted = [t for t in trials if t.state == STATES.FAIL]
    assert interrupted and all("driver stopped" in t.user_attrs[FAILURE_ATTR] for t in interrupted)

    # 3. the same command resumes: the two completed trials count toward the budget
    resumed = subprocess.run(command, env=env, capture_output=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    after = completed(storage, "tiny")
    assert len(after) == budget
    assert {t.number: t.values for t in done}.items() <= {t.number: t.values for t in after}.items()
    # whether the scheduler stopped any of these random trials is left to chance here: the rung test below makes it certain
    front = subprocess.run([CLI, "front", "--storage", storage, "--study", "tiny", "--json"], capture_output=True)
    assert front.returncode == 0 and json.loads(front.stdout)["points"]


RUNG_SPACE = """
name: rungs
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture: {mlp: {hidden_layers: 1, hidden_width: {low: 8, high: 16}, latent_dim: 4}}
training: {epochs: 3, batch_size: 128, lr: {low: 1.0e-7, high: 1.0e-2, log: true}}
objectives: [test_elbo_nats, size_bytes]
sampler: {name: random, seed: 0}
pruner: {name: pareto, warmup_epochs: 1, min_trials: 1, reduction_factor: 2}
latency: {batch_size: 32, repeats: 1, warmup: 0}
trials: 2
"""
# One at a time, in this order. At the epoch-1 rung (epochs 1 and 2 are rungs of a 3-epoch trial):
# - GOOD has no peer yet, and goes on;
# - FROZEN (lr 1e-7: its loss stays at the untrained model's) has GOOD's size and a worse loss: GOOD dominates it,
#   1 trial lies in a better layer and the quota keeps ceil(2 / 2) = 1, so the scheduler stops it;
# - SMALL is narrower than both, so it is on the rung's front whatever its loss, and completes the budget of 2.
GOOD = {"mlp.hidden_width": 16, "training.lr": 1.0e-2}
FROZEN = {"mlp.hidden_width": 16, "training.lr": 1.0e-7}
SMALL = {"mlp.hidden_width": 8, "training.lr": 1.0e-2}


@pytest.mark.slow
def test_pareto_scheduler_stops_the_dominated_trial_at_its_rung(ray_head: str, tmp_path: Path) -> None:
    import vae_automl
    from vae_automl.config import load_space
    from vae_automl.early_stopping import RUNG_VALUES_ATTR, STOPPED_AT_ATTR
    from vae_automl.registry import get_registry
    from vae_automl.study import create_study

    path = tmp_path / "rungs.yaml"
    path.write_text(RUNG_SPACE)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(load_space(path), storage, "rungs", tmp_path, get_registry())
    for params in (GOOD, FROZEN, SMALL):
        study.enqueue_trial(params)
    result = vae_automl.search(path, storage=storage, out_dir=tmp_path / "out", backend="ray", address=ray_head,
                               concurrency=1, scheduler="pareto", show_progress=False)
    assert result.completed == 2
    trials = optuna.load_study(study_name="rungs", storage=storage).trials
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.PRUNED, STATES.COMPLETE]
    assert [t.params["training.lr"] for t in trials] == [GOOD["training.lr"], FROZEN["training.lr"], SMALL["training.lr"]]
    pruned = [t for t in trials if t.state == STATES.PRUNED]
    assert len(pruned) == 1, "the setup guarantees one trial stopped at a rung"
    good, frozen = trials[0], pruned[0]
    assert frozen.user_attrs[STOPPED_AT_ATTR] == 1
    assert len(frozen.user_attrs["validation_curve"]) == 1  # stopped after its first epoch, not at the end
    good_loss, good_size = good.user_attrs[RUNG_VALUES_ATTR]["1"]
    frozen_loss, frozen_size = frozen.user_attrs[RUNG_VALUES_ATTR]["1"]
    assert frozen_size == good_size and frozen_loss > good_loss  # the domination that stopped it
    assert set(good.user_attrs[RUNG_VALUES_ATTR]) == {"1", "2"}  # the trial that went on passed both rungs


@pytest.mark.parametrize(
    ("address", "environ", "expected"),
    [
        (None, {}, "local"),  # not None: Ray would join the stale cluster /tmp/ray/ray_current_cluster names
        (None, {"RAY_ADDRESS": ""}, "local"),  # an empty RAY_ADDRESS names nothing (Ray ignores it too)
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, None),  # Ray reads RAY_ADDRESS itself
        ("auto", {}, "auto"),
        ("10.0.0.2:6379", {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.2:6379"),
    ],
)
def test_no_address_starts_a_new_local_ray(address: str | None, environ: dict[str, str], expected: str | None) -> None:
    assert ray_init_address(address, environ) == expected


def test_store_baseline_keeps_the_first_reported_row() -> None:
    from vae_automl.backends.ray import BASELINE_KEY, store_baseline
    from vae_automl.study import BASELINE_ATTR

    study = optuna.create_study(directions=["minimize"])
    assert store_baseline(study, {BASELINE_KEY: ""}) is False and store_baseline(study, None) is False
    assert BASELINE_ATTR not in study.user_attrs
    row = {"objectives": {"test_elbo_nats": 25.0}, "metrics": {"test_elbo_nats": 25.0}, "base_model": {"params": 3}}
    assert store_baseline(study, {BASELINE_KEY: json.dumps(row)}) is True
    assert study.user_attrs[BASELINE_ATTR] == row
    # a later trial's report (another worker measured it too) does not replace the stored row
    assert store_baseline(study, {BASELINE_KEY: json.dumps({**row, "objectives": {"test_elbo_nats": 1.0}})}) is True
    assert study.user_attrs[BASELINE_ATTR] == row


BASE_MODEL_SPACE = """
name: byom-ray
dataset: digits
base_model: {factory: "vae_automl.testing.user_model:build", kwargs: {latent: 4, width: 4}, checkpoint: ckpt.safetensors}
training: {epochs: 1, batch_size: 64}
compressors: [{name: uniform, params: {bits: {low: 4, high: 8}}}]  # a space of one point would repeat its trial
objectives: [test_elbo_nats, size_bytes]
latency: {repeats: 2, warmup: 1}
sampler: {name: random, seed: 0}
trials: 2
"""


@pytest.mark.slow
def test_ray_search_stores_the_base_models_baseline_row(ray_head: str, tmp_path: Path) -> None:
    import vae_automl
    from vae_automl.config import load_space
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.study import BASELINE_ATTR
    from vae_automl.trial import base_model_baseline, prepare

    import torch
    from safetensors.torch import save_file

    from vae_automl.testing.user_model import build

    torch.manual_seed(0)
    save_file(build(latent=4, width=4).state_dict(), tmp_path / "ckpt.safetensors")
    path = tmp_path / "byom.yaml"
    path.write_text(BASE_MODEL_SPACE)
    result = vae_automl.search(path, out_dir=tmp_path / "out", backend="ray", address=ray_head, concurrency=1,
                               show_progress=False)
    assert result.completed == 2
    # the same row the Optuna backend's driver measures, here measured in this process
    env = prepare(load_space(path), tmp_path / "local", get_registry(), get_plugin_manager(), device="cpu")
    local = base_model_baseline(env)
    assert local is not None and result.baseline is not None
    assert result.baseline == pytest.approx(local["objectives"], rel=1e-5)
    stored = optuna.load_study(study_name="byom-ray", storage=result.storage).user_attrs[BASELINE_ATTR]
    assert stored["metrics"]["size_bytes"] == local["metrics"]["size_bytes"]
    assert stored["base_model"]["base_model"] == "vae_automl.testing.user_model:build"
    # the compressed trials differ from it: the row is the uncompressed model's, not a trial's
    assert result.front and all(e.objectives["size_bytes"] < result.baseline["size_bytes"] for e in result.front)
