"""The ``hvi`` sampler: its hypervolume improvement, conditional spaces, concurrent workers, targets, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from vae_automl import pareto, samplers
from vae_automl import space as space_mod
from vae_automl.config import SamplerConfig, load_space
from vae_automl.hvi_sampler import GaussianProcess, HypervolumeSampler, hypervolume_improvement_2d
from vae_automl.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
MIN2 = ["minimize", "minimize"]


def quick() -> Any:
    return load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())


def quick_values(params: dict[str, Any]) -> list[float]:
    """A smooth stand-in for quick.yaml's objectives: wider and longer-trained is better, and bigger."""
    width, latent = params["mlp.hidden_width"], params["mlp.latent_dim"]
    bits = params.get("compressor0.uniform.bits", 32)
    elbo = 30.0 - np.log(width) - 0.3 * np.log(latent) - params["training.epochs"] / 30 + 4.0 / bits
    return [float(elbo), float(width * (784 + latent) * params["mlp.hidden_layers"] * bits / 8)]


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_improvement_matches_the_hypervolume_difference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    front = rng.random((6, 2))
    front = front[pareto.non_dominated(front, MIN2)]
    reference = np.array([1.05, 1.1])
    points = np.vstack([rng.random((30, 2)) * 1.2 - 0.1, front[:2], [[2.0, 0.0], [0.0, 2.0]]])
    got = hypervolume_improvement_2d(points, front, reference)
    base = pareto.hypervolume(front, reference, MIN2)
    want = [pareto.hypervolume(np.vstack([front, p]), reference, MIN2) - base for p in points]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.all(got[-4:] == 0.0)  # on the front already, or beyond the reference point
    empty = hypervolume_improvement_2d(np.array([[0.5, 0.5]]), np.empty((0, 2)), reference)
    assert empty[0] == pytest.approx(0.55 * 0.6)


def test_the_gaussian_process_interpolates_and_is_unsure_far_from_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 2))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2
    gp = GaussianProcess()
    gp.fit(x, y)
    mean, sd = gp.predict(x)
    assert np.max(np.abs(mean - y)) < 0.05
    test = rng.random((50, 2))
    mean_t, _ = gp.predict(test)
    assert np.sqrt(np.mean((mean_t - (np.sin(3 * test[:, 0]) + test[:, 1] ** 2)) ** 2)) < 0.1
    _, far = gp.predict(np.array([[5.0, 5.0]]))
    assert far[0] > 5 * sd.max()
    # a running trial believed at its predicted value: the mean stays, the spread there shrinks
    point = np.array([[0.5, 2.0]])
    before_mean, before_sd = gp.predict(point)
    gp.believe(point)
    after_mean, after_sd = gp.predict(point)
    assert after_mean[0] == pytest.approx(before_mean[0], abs=1e-6) and after_sd[0] < 0.5 * before_sd[0]


def run(study: optuna.Study, space: Any, trials: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(trials):
        trial = study.ask()
        params = space_mod.suggest(trial, space)
        study.tell(trial, quick_values(params))
        out.append(params)
    return out


def test_auto_samples_the_conditional_space_and_beats_random_search() -> None:
    space = quick()
    hvs = {}
    for name in ("auto", "random"):
        found = []
        for seed in range(2):
            sampler = samplers.make_sampler(SamplerConfig(name=name, seed=seed), space)
            study = optuna.create_study(directions=MIN2, sampler=sampler)
            drawn = run(study, space, 25)
            for params in drawn:
                assert ("compressor0.uniform.bits" in params) == (params["compressor0"] == "uniform")
            assert len({tuple(sorted(p.items())) for p in drawn}) == len(drawn)  # never a completed point again
            found.append(np.log10([t.values for t in study.trials]))
        every = np.vstack(found)
        reference = every.max(axis=0) + 0.1
        hvs[name] = np.mean([pareto.hypervolume(f, reference, MIN2) for f in found])
    assert hvs["auto"] > hvs["random"]


def test_concurrent_workers_sharing_a_study_spread_out(tmp_path: Path) -> None:
    space = quick()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        directions=MIN2, storage=storage, study_name="s", sampler=samplers.make_sampler(SamplerConfig(name="auto", seed=0), space)
    )
    run(study, space, 10)
    # two workers, each its own process's sampler (seed offset by its pid as the worker does), ask at once
    workers = [
        optuna.load_study(
            study_name="s",
            storage=storage,
            sampler=samplers.make_sampler(SamplerConfig(name="auto", seed=0), space, seed_offset=k),
        )
        for k in (1, 2)
    ]
    running = []
    for study_k in workers + workers:
        trial = study_k.ask()
        running.append((study_k, trial, space_mod.suggest(trial, space)))
    drawn = [tuple(sorted(p.items())) for _, _, p in running]
    assert len(set(drawn)) == len(drawn)
    for study_k, trial, params in running:
        study_k.tell(trial, quick_values(params))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 14


def test_a_running_trial_is_not_drawn_again() -> None:
    space = quick()
    sampler = HypervolumeSampler(samplers.SpaceDraw(space), seed=3, n_startup_trials=4, n_candidates=16)
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    run(study, space, 6)
    first = study.ask()
    first_params = space_mod.suggest(first, space)
    second = study.ask()
    assert space_mod.suggest(second, space) != first_params


def test_targets_steer_it_to_feasible_points() -> None:
    """Only x <= 0.2 meets the target: after the start-up, most trials the sampler picks meet it."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        trial.set_constraint("x.max", x - 0.2)
        return x + y, 1 - x + y

    def draw(trial: Any) -> None:
        trial.suggest_float("x", 0, 1)
        trial.suggest_float("y", 0, 1)

    study = optuna.create_study(directions=MIN2, sampler=HypervolumeSampler(draw, seed=0, n_candidates=64))
    study.optimize(objective, n_trials=30)
    later = study.trials[10:]
    assert sum(all(v <= 0 for v in t.constraints.values()) for t in later) >= 0.7 * len(later)


def test_it_pickles_for_ray_and_needs_the_space() -> None:
    sampler = samplers.make_sampler(SamplerConfig(name="hvi", seed=0), quick())
    assert isinstance(pickle.loads(pickle.dumps(sampler)), HypervolumeSampler)
    with pytest.raises(ValueError, match="search space"):
        samplers.make_sampler(SamplerConfig(name="hvi", seed=0))


def test_the_start_up_is_random_and_seeded() -> None:
    space = quick()

    def first(seed: int) -> list[dict[str, Any]]:
        sampler = samplers.make_sampler(SamplerConfig(name="hvi", seed=seed, n_startup_trials=3), space)
        return run(optuna.create_study(directions=MIN2, sampler=sampler), space, 5)

    assert first(0) == first(0) and first(0) != first(1)


def test_completed_running_and_stopped_points_are_not_drawn_again() -> None:
    """Eight points in all: after four completed and two stopped, the next two asks are the two left."""

    def draw(trial: Any) -> None:
        trial.suggest_categorical("a", [0, 1, 2, 3])
        trial.suggest_categorical("b", ["x", "y"])

    study = optuna.create_study(directions=MIN2, sampler=HypervolumeSampler(draw, seed=0, n_startup_trials=4))
    for k in range(6):
        trial = study.ask()
        draw(trial)
        if k < 4:
            study.tell(trial, [float(trial.params["a"]), float(k)])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    running = study.ask()
    draw(running)
    last = study.ask()
    draw(last)
    every = {(a, b) for a in range(4) for b in "xy"}
    seen = [(t.params["a"], t.params["b"]) for t in study.trials]
    assert set(seen) == every and len(seen) == 8


def test_a_second_concurrent_ask_is_not_a_near_copy_of_the_first() -> None:
    """The running trial is believed at its predicted values: the next ask looks elsewhere, not next door."""

    def draw(trial: Any) -> None:
        trial.suggest_float("x", 0, 1)
        trial.suggest_float("y", 0, 1)

    def values(params: dict[str, float]) -> list[float]:
        return [params["x"] + params["y"], 1 - params["x"] ** 0.5 + params["y"]]

    for seed in range(3):
        study = optuna.create_study(directions=MIN2, sampler=HypervolumeSampler(draw, seed=seed))
        for _ in range(12):
            trial = study.ask()
            draw(trial)
            study.tell(trial, values(trial.params))
        first = study.ask()
        draw(first)  # as a worker or Ray's searcher does at once: the running trial holds its params
        second = study.ask()
        draw(second)
        a, b = first.params, second.params
        assert abs(a["x"] - b["x"]) + abs(a["y"] - b["y"]) > 0.02


@pytest.mark.parametrize("startup", [0, 1])
def test_no_start_up_models_from_the_first_completed_trial(startup: int) -> None:
    """``sampler: {n_startup_trials: 0}`` is valid config: the first ask, with nothing to model, is random
    (it raised an IndexError from the empty values array, crashing the search)."""
    space = quick()
    sampler = samplers.make_sampler(SamplerConfig(name="hvi", seed=0, n_startup_trials=startup), space)
    drawn = run(optuna.create_study(directions=MIN2, sampler=sampler), space, 4)
    assert len({tuple(sorted(p.items())) for p in drawn}) == 4
