"""What ``hvi`` learns from trials early stopping ended: their rung values, as estimates of their objectives."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from vae_automl import early_stopping, samplers
from vae_automl.config import SamplerConfig, load_space
from vae_automl.hvi_sampler import GaussianProcess, HypervolumeSampler
from vae_automl.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
MIN2 = ["minimize", "minimize"]
GAIN = 1.5
"""Completed trials' final loss is their rung score / GAIN: a gain of -log10(1.5) on the models' log scale."""


def draw(trial: Any) -> None:
    trial.suggest_float("x", 0, 1)
    trial.suggest_float("y", 0, 1)


def loss(p: dict[str, float]) -> float:
    return 2.0 + p["x"] + p["y"]


def size(p: dict[str, float]) -> float:
    return 10.0 + 100.0 * (1 - p["x"])


def study_with(
    completed_at_rung: int,
    stopped: dict[str, float],
    layout: tuple[int, int] | None,
    directions: list[str] = MIN2,
    gains: list[float] | None = None,
) -> tuple[optuna.Study, HypervolumeSampler]:
    """Eight completed trials (``completed_at_rung`` of them with rung-5 values) and one trial stopped at rung 5."""
    sampler = HypervolumeSampler(draw, seed=0, n_startup_trials=4, n_candidates=16, rung_layout=layout)
    study = optuna.create_study(directions=directions, sampler=sampler)
    dist = optuna.distributions.FloatDistribution(0, 1)
    rng = np.random.default_rng(0)
    for k in range(8):
        p = {"x": float(rng.random()), "y": float(rng.random())}
        score = (gains[k] if gains else GAIN) * loss(p)
        attrs = {early_stopping.RUNG_VALUES_ATTR: {"5": [score, size(p)]}} if k < completed_at_rung else {}
        study.add_trial(optuna.trial.create_trial(params=p, distributions={"x": dist, "y": dist},
                                                  values=[loss(p), size(p)], user_attrs=attrs))
    attrs = {early_stopping.RUNG_VALUES_ATTR: {"5": [GAIN * loss(stopped), size(stopped)]},
             early_stopping.STOPPED_AT_ATTR: 5}
    study.add_trial(optuna.trial.create_trial(params=stopped, distributions={"x": dist, "y": dist},
                                              state=optuna.trial.TrialState.PRUNED, user_attrs=attrs))
    return study, sampler


def estimates(study: optuna.Study, sampler: HypervolumeSampler) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    trials = study.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    y = np.array([[math.log10(v) for v in t.values] for t in done])
    return sampler._stopped_estimates(stopped, done, y * np.where(signs > 0, 1.0, -1.0), signs, [s > 0 for s in signs])


STOPPED = {"x": 0.9, "y": 0.95}


def test_a_stopped_trial_counts_at_its_rung_score_plus_the_completed_trials_gain() -> None:
    study, sampler = study_with(8, STOPPED, (0, 1))
    [(trial, values, noise)] = estimates(study, sampler)
    assert trial.params == STOPPED
    # the loss: its rung score less the median gain completed trials made after the same rung; all equal here
    assert values[0] == pytest.approx(math.log10(loss(STOPPED)), abs=1e-9) and noise[0] == pytest.approx(0.0, abs=1e-12)
    assert values[1] == pytest.approx(math.log10(size(STOPPED)))  # known before training: exactly, no extra noise
    assert noise[1] == 0.0


def test_the_gains_spread_is_the_estimates_extra_noise() -> None:
    # three completed trials went on to a loss 2x lower than the others did, from their rung score
    study, sampler = study_with(8, STOPPED, (0, 1), gains=[2 * GAIN] * 3 + [GAIN] * 5)
    [(_, values, noise)] = estimates(study, sampler)
    gains = np.array([-math.log10(GAIN)] * 5 + [-math.log10(2 * GAIN)] * 3)
    assert values[0] == pytest.approx(math.log10(GAIN * loss(STOPPED)) + np.median(gains))
    assert noise[0] == pytest.approx(gains.var()) and noise[0] > 0


def test_no_loss_estimate_from_fewer_than_three_completed_trials_at_the_rung() -> None:
    study, sampler = study_with(2, STOPPED, (0, 1))
    [(_, values, _)] = estimates(study, sampler)
    assert np.isnan(values[0]) and values[1] == pytest.approx(math.log10(size(STOPPED)))
    study, sampler = study_with(3, STOPPED, (0, 1))
    assert not np.isnan(estimates(study, sampler)[0][1][0])


def test_a_maximized_objective_is_not_estimated_from_a_loss() -> None:
    study, sampler = study_with(8, STOPPED, (0, 1), directions=["maximize", "minimize"])
    [(_, values, _)] = estimates(study, sampler)
    assert np.isnan(values[0]) and not np.isnan(values[1])


def test_without_a_layout_stopped_trials_are_not_modelled() -> None:
    study, sampler = study_with(8, STOPPED, None)
    assert estimates(study, sampler) == []
    study.ask()  # the models are fitted on the eight completed trials alone
    assert sampler._models["objective0"].x.shape[0] == 8


def test_the_models_are_fitted_on_the_stopped_trial_too() -> None:
    study, sampler = study_with(8, STOPPED, (0, 1))
    study.ask()
    for j, value in enumerate((loss(STOPPED), size(STOPPED))):
        gp = sampler._models[f"objective{j}"]
        assert gp.x.shape[0] == 9
        mean, _ = gp.predict(gp.x[-1:])  # the stopped trial's row: near what it taught
        assert mean[0] == pytest.approx(math.log10(value), abs=0.05)


def test_extra_noise_lets_an_estimate_pull_the_model_less() -> None:
    x = np.linspace(0, 1, 9)[:, None]
    truth = np.sin(3 * x[:, 0])
    y = truth.copy()
    y[4] += 0.5  # one value off the curve: an estimate
    sure, unsure = GaussianProcess(), GaussianProcess()
    sure.fit(x, y)
    unsure.fit(x, y, extra_noise=np.where(np.arange(9) == 4, 100.0, 0.0))
    assert sure.predict(x[4:5])[0][0] > truth[4] + 0.2  # taken as measured, it bends the model
    assert unsure.predict(x[4:5])[0][0] == pytest.approx(truth[4], abs=0.05)  # very unsure: the others decide


def test_the_layout_follows_the_objectives_that_need_training() -> None:
    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    assert samplers.rung_layout(space) == [0, 1]  # test_elbo_nats: the score; size_bytes: first known before training
    three = dataclasses.replace(space, objectives=("size_bytes", "test_elbo_nats", "latency_ms"))
    assert samplers.rung_layout(three) == [1, 0, 2]
    sampler = samplers.make_sampler(SamplerConfig(name="auto", seed=0), space)
    assert isinstance(sampler, HypervolumeSampler) and sampler.rung_layout == (0, 1)


def test_the_layout_reads_the_registry_the_space_was_loaded_with() -> None:
    """A library user's own registry may hold an objective the process-wide one lacks."""
    from vae_automl.backends.base import SearchPolicy
    from vae_automl.components import MeasureContext, Objective
    from vae_automl.testing.compressors import registry_with

    class FlopsCount(Objective):
        name = "flops_count_of_this_test"
        needs_training = False

        def measure(self, ctx: MeasureContext) -> float:
            return 0.0

    registry = registry_with(None)
    registry.objectives.add(FlopsCount(), "test", "0")
    space = dataclasses.replace(
        load_space(ROOT / "search_spaces" / "quick.yaml", get_registry()), objectives=("test_elbo_nats", FlopsCount.name)
    )
    assert samplers.rung_layout(space, registry) == [0, 1]
    sampler = SearchPolicy(space, registry).sampler()
    assert isinstance(sampler, HypervolumeSampler) and sampler.rung_layout == (0, 1)
