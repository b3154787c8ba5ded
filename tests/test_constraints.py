"""Targets: parsing, constraint values, steering the sampler, first_feasible, and the report of misses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl import constraints
from vae_automl.config import Target, load_space
from vae_automl.errors import ConfigError
from vae_automl.registry import get_registry
from vae_automl.study import FrontEntry

ELBO3 = Target("test_elbo_nats", "max_relative_to_baseline", 0.03)
SIZE = Target("size_bytes", "max", 200_000.0)
PSNR = Target("psnr", "min", 30.0)


def test_constraint_values_are_relative_distances_to_the_limit() -> None:
    checks = constraints.check([ELBO3, SIZE], {"test_elbo_nats": 103.0, "size_bytes": 250_000.0},
                               {"test_elbo_nats": 100.0, "size_bytes": 900_000.0})
    assert checks[0].limit == pytest.approx(103.0) and checks[0].violation == pytest.approx(0.0) and checks[0].met
    assert checks[1].violation == pytest.approx(0.25) and not checks[1].met
    assert "missed by 25.0%" in checks[1].describe()
    assert not constraints.feasible(checks)
    just_over = constraints.check([ELBO3], {"test_elbo_nats": 103.01}, {"test_elbo_nats": 100.0})
    assert not just_over[0].met
    low = constraints.check([PSNR], {"psnr": 27.0}, {})
    assert low[0].violation == pytest.approx(0.1) and not low[0].met  # min bounds count shortfalls


def write(tmp_path: Path, extra: str) -> Path:
    text = (Path(__file__).resolve().parents[1] / "search_spaces" / "quick.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(text + extra)
    return path


def test_targets_parse_and_bad_ones_name_the_key(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "targets:\n  test_elbo_nats: {max_relative_to_baseline: 0.03}\n"
                                       "  size_bytes: {max: 200000}\nstop_when: first_feasible\n"), get_registry())
    assert space.targets == (ELBO3, SIZE) and space.stop_when == "first_feasible"
    with pytest.raises(ConfigError, match="targets.sharpness"):
        load_space(write(tmp_path, "targets:\n  sharpness: {max: 1}\n"), get_registry())
    with pytest.raises(ConfigError, match="targets.size_bytes.below"):
        load_space(write(tmp_path, "targets:\n  size_bytes: {below: 1}\n"), get_registry())
    with pytest.raises(ConfigError, match="stop_when"):
        load_space(write(tmp_path, "stop_when: first_feasible\n"), get_registry())


def test_stored_constraints_steer_samplers_and_mark_feasibility() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for value in (-0.1, 0.2):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        constraints.set_constraints(trial, constraints.check([SIZE], {"size_bytes": 200_000 * (1 + value)}, {}))
        study.tell(trial, [1.0, 2.0])
    ok, missed = study.trials
    assert constraints.is_feasible_trial(ok) is True and constraints.is_feasible_trial(missed) is False
    assert missed.constraints == {"size_bytes.max": pytest.approx(0.2)}  # what TPE/GP/NSGA-II read
    bare = optuna.create_study()
    bare.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert constraints.is_feasible_trial(bare.trials[0]) is None


def test_first_feasible_stops_the_search(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.api import search

    path = tiny_space(trials=6)
    # every trial meets this target, so the search stops after its first
    path.write_text(path.read_text() + "targets:\n  size_bytes: {max: 1.0e9}\nstop_when: first_feasible\n")
    result = search(path, out_dir=tmp_path / "out", show_progress=False)
    assert result.completed == 1


def test_report_lists_misses_when_no_trial_is_feasible() -> None:
    from vae_automl.record import BaseInfo, LatencyInfo, TrialRecord
    from vae_automl.report import format_against_baseline

    def entry(n: int, elbo: float, size: float) -> FrontEntry:
        values = {"test_elbo_nats": elbo, "size_bytes": size}
        record = TrialRecord(trial=n, params={}, config={}, model_config={}, objectives=values, metrics=values, data={},
                             device="cpu", latency=LatencyInfo(1, "cpu", 1, "torch"),
                             base=BaseInfo("k", 1, 1, False, 0.0, 0.0, []), artifact="", artifact_sha256="",
                             seconds=0.0, baseline={"test_elbo_nats": 100.0, "size_bytes": 400_000.0})
        return FrontEntry(n, {}, values, record)

    front = [entry(0, 101.0, 25_000.0), entry(1, 110.0, 20_000.0)]
    text = format_against_baseline(front, [ELBO3, Target("size_bytes", "max", 21_000.0)], front)
    assert "trial 0: test_elbo_nats +1.0%, size_bytes 16.0x smaller" in text
    assert "size_bytes 2.5e+04 <= 2.1e+04: missed by 19.0%" in text
    assert "no completed trial meets every target" in text
    assert "test_elbo_nats 110 <= 103: missed by 6.8%" in text
