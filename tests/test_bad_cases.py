"""Regression tests of issue 16's bad cases: nothing lost, nothing mixed, nothing repeated, every failure explained."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from vae_automl import space as space_mod
from vae_automl.api import search
from vae_automl.cli import main
from vae_automl.config import load_space_text, study_name_problem
from vae_automl.data import to_unit_float
from vae_automl.errors import ConfigError, DataError
from vae_automl.registry import get_registry
from vae_automl.study import FAILURE_ATTR, create_study, open_storage

STATES = optuna.trial.TrialState


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# --- study names are names, not paths ---

@pytest.mark.parametrize("name", ["../../x", "a/b", "/abs", "..", ".", "a\\b", "", "  ", "x\0y"])
def test_a_study_name_that_is_a_path_is_refused(name: str) -> None:
    assert study_name_problem(name) is not None


@pytest.mark.parametrize("name", ["x", "a..b", "..x", "x.y", "my study-2", "~x"])
def test_a_plain_name_is_a_name(name: str) -> None:
    assert study_name_problem(name) is None


def test_yaml_name_with_separators_is_refused_naming_the_key(tiny_space: Any) -> None:
    text = tiny_space().read_text().replace("name: tiny", 'name: "../../x"')
    with pytest.raises(ConfigError, match=r"space\.yaml: name: a study name is a name, not a path .*'\.\./\.\./x'"):
        load_space_text(text, "space.yaml")


def test_cli_study_with_separators_writes_nothing_outside_out(tiny_space: Any, tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"--study: .*'\.\./\.\./x'"):
        search(tiny_space(), trials=0, study_name="../../x", show_progress=False)
    with pytest.raises(ConfigError, match="not a path"):
        search(tiny_space(), trials=0, study_name=str(tmp_path / "abs"), out_dir=work, show_progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists()
    assert list(work.iterdir()) == []


def test_create_study_refuses_a_path_name_too(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.config import load_space

    with pytest.raises(ConfigError, match="not a path"):
        create_study(load_space(tiny_space()), f"sqlite:///{tmp_path / 's.db'}", "a/b", tmp_path, get_registry())


# --- data is checked for NaN and inf ---

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_naming_the_image(bad: float) -> None:
    images = np.zeros((5, 1, 4, 4), dtype=np.float32)
    images[3, 0, 2, 1] = bad
    with pytest.raises(DataError, match=r"src: 1 pixel values are NaN or infinite, in 1 images \(first: image 3\)"):
        to_unit_float(images, "src")


def test_finite_pixels_at_the_bounds_pass() -> None:
    images = np.zeros((2, 1, 2, 2), dtype=np.float64)
    images[1] = 1.0
    out = to_unit_float(images, "src")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_float64_values_beyond_float32_are_refused_as_infinite() -> None:
    images = np.zeros((2, 1, 2, 2), dtype=np.float64)
    images[0, 0, 0, 0] = 1e300
    with pytest.raises(DataError, match="infinite"):
        to_unit_float(images, "src")


# --- every trial failure records its reason, sampling included; exit 1 when every trial failed ---

def test_an_error_raised_while_sampling_is_stored_as_the_reason(tiny_space: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(trial: Any, space: Any) -> dict[str, Any]:
        raise ValueError("Cannot set different log configuration to the same parameter name")

    monkeypatch.setattr(space_mod, "suggest", broken)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(tiny_space(), trials=1, storage=storage, out_dir=tmp_path, show_progress=False)
    trials = _trials(storage, "tiny")
    assert trials and all(t.state == STATES.FAIL for t in trials)
    assert all(t.user_attrs[FAILURE_ATTR] == "ValueError: Cannot set different log configuration to the same "
               "parameter name" for t in trials)
    assert result.failure is not None and "all 3 trials this run finished failed" in result.failure
    assert "Cannot set different log configuration" in result.failure


def test_cli_exits_1_when_every_trial_failed(tiny_space: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(trial: Any, space: Any) -> dict[str, Any]:
        raise ValueError("no point")

    monkeypatch.setattr(space_mod, "suggest", broken)
    rc = main(["search", str(tiny_space()), "--out", str(tmp_path), "--trials", "1"])
    assert rc == 1
    assert "all 3 trials this run finished failed (none completed); the last: ValueError: no point" in capsys.readouterr().err


def test_cli_exits_zero_when_one_trial_completed(tiny_space: Any, tmp_path: Path) -> None:
    assert main(["search", str(tiny_space(trials=1, max_epochs=1)), "--out", str(tmp_path), "--trials", "1"]) == 0


# --- the first heartbeat is beaten at trial start, in both backends ---

def _heartbeat_rows(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT trial_id FROM trial_heartbeats")]


def test_optuna_backend_beats_before_the_trial_runs(tiny_space: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_automl.backends import optuna as optuna_backend

    monkeypatch.setenv("VAE_AUTOML_HEARTBEAT_INTERVAL_S", "3600")  # no second beat can come in time
    seen: list[list[int]] = []
    real = optuna_backend.run_trial

    def spy(env: Any, spec: Any, number: int, **kwargs: Any) -> Any:
        seen.append(_heartbeat_rows(tmp_path / "study.db"))
        return real(env, spec, number, **kwargs)

    monkeypatch.setattr(optuna_backend, "run_trial", spy)
    search(tiny_space(max_epochs=1), trials=1, storage=f"sqlite:///{tmp_path / 'study.db'}", out_dir=tmp_path,
           show_progress=False)
    assert seen == [[1]]  # trial 0 has storage id 1, and beat before it ran


def test_ray_searcher_beats_when_it_hands_out_a_trial(tiny_space: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.tune")
    from vae_automl.backends.base import SearchPolicy
    from vae_automl.backends.ray import _DefineByRun, _make_searcher_class
    from vae_automl.config import load_space
    from vae_automl.progress import Progress

    monkeypatch.setenv("VAE_AUTOML_HEARTBEAT_INTERVAL_S", "3600")
    space = load_space(tiny_space())
    db = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{db}")
    study = create_study(space, storage, "tiny", tmp_path, get_registry())
    searcher = _make_searcher_class()(
        space=_DefineByRun(space), metric=list(space.objectives), mode=["min", "min"], sampler=study.sampler,
        study_name="tiny", storage=storage, objectives=tuple(space.objectives), target_completed=2, done=0,
        max_failures=3, deadline=None, progress=Progress(None, space.objectives, (), enabled=False),
        policy=SearchPolicy(space, get_registry()),
    )
    assert _heartbeat_rows(db) == []
    config = searcher.suggest("t0")
    assert isinstance(config, dict)
    assert _heartbeat_rows(db) == [1]
    searcher.fail_in_flight("test over")


def test_ray_searcher_stores_a_sampling_error_as_the_reason(tiny_space: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.tune")
    from vae_automl.backends.ray import _DefineByRun, _make_searcher_class
    from vae_automl.config import load_space
    from vae_automl.progress import Progress

    def broken(trial: Any, space: Any) -> dict[str, Any]:
        raise ValueError("bad distribution")

    space = load_space(tiny_space())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(space, storage, "tiny", tmp_path, get_registry())
    monkeypatch.setattr(space_mod, "suggest", broken)
    searcher = _make_searcher_class()(
        space=_DefineByRun(space), metric=list(space.objectives), mode=["min", "min"], sampler=study.sampler,
        study_name="tiny", storage=open_storage(storage), objectives=tuple(space.objectives), target_completed=2,
        done=0, max_failures=1, deadline=None, progress=Progress(None, space.objectives, (), enabled=False),
    )
    assert searcher.suggest("t0") is None
    [trial] = _trials(storage, "tiny")
    assert trial.state == STATES.FAIL and trial.user_attrs[FAILURE_ATTR] == "ValueError: bad distribution"
    assert searcher.suggest("t1") == "FINISHED"  # the failure counts toward the cap that ends a hopeless space


# --- a resumed or parallel run never repeats a completed configuration ---

def _completed_params(storage: str, name: str) -> list[dict[str, Any]]:
    return [t.params for t in _trials(storage, name) if t.state == STATES.COMPLETE]


def test_running_the_same_search_twice_draws_new_points(tiny_space: Any, tmp_path: Path) -> None:
    space, storage = tiny_space(max_epochs=1), f"sqlite:///{tmp_path / 'study.db'}"
    for _ in range(2):
        search(space, trials=3, storage=storage, out_dir=tmp_path, show_progress=False)
    params = _completed_params(storage, "tiny")
    assert len(params) == 6
    assert len({tuple(sorted(p.items())) for p in params}) == 6


TWO_POINTS = "  hidden_width: {low: 8, high: 24, log: true}"


def _two_point_space(tiny_space: Any, repeats: bool = False) -> Path:
    path = tiny_space(max_epochs=1)
    text = (path.read_text().replace(TWO_POINTS, "  hidden_width: {choices: [8, 16]}")
            .replace("latent_dim: {low: 2, high: 6}", "latent_dim: 2").replace("epochs: {low: 1, high: 1}", "epochs: 1")
            .replace("lr: {low: 3.0e-3, high: 1.0e-2, log: true}", "lr: 3.0e-3")
            .replace("sampler: {name: random, seed: 0}", f"sampler: {{name: random, seed: 0, repeats: {str(repeats).lower()}}}"))
    path.write_text(text)
    return path


def test_a_drawn_repeat_is_not_run_and_an_exhausted_space_ends(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.study import ATTEMPTS_PER_TRIAL

    space, storage = _two_point_space(tiny_space), f"sqlite:///{tmp_path / 'study.db'}"
    assert "choices: [8, 16]" in space.read_text() and "repeats: false" in space.read_text()
    search(space, trials=2, storage=storage, out_dir=tmp_path, show_progress=False)
    first = len(_trials(storage, "tiny"))
    result = search(space, trials=2, storage=storage, out_dir=tmp_path, show_progress=False)
    trials = _trials(storage, "tiny")
    completed = {t.number: t.params for t in trials if t.state == STATES.COMPLETE}
    assert sorted(p["mlp.hidden_width"] for p in completed.values()) == [8, 16]  # only two points exist
    repeats = [t for t in trials if t.state == STATES.PRUNED]
    assert repeats and all(completed[t.user_attrs["duplicate_of"]] == t.params for t in repeats)
    assert all("record" not in t.user_attrs for t in repeats)  # not run at all
    # the second run found nothing new: it ended after 3 repeats per wanted trial, not in an endless loop
    assert result.completed == 2 and [t.state for t in trials[first:]] == [STATES.PRUNED] * (2 * ATTEMPTS_PER_TRIAL)
    assert result.exhausted is not None and "completed 0 of the 2 trials asked" in result.exhausted
    assert result.stats["repeats"] == 2 * ATTEMPTS_PER_TRIAL


def test_an_exhausted_space_exits_3_and_says_so(tiny_space: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space, storage = _two_point_space(tiny_space), f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["search", str(space), "--storage", storage, "--out", str(tmp_path), "--json"]
    assert main([*argv, "--n-trials", "2"]) == 0  # both points exist: asked and done
    capsys.readouterr()
    assert main([*argv, "--n-trials", "1"]) == 3  # no third point: fewer than asked
    captured = capsys.readouterr()
    assert "incomplete: completed 0 of the 1 trials asked: the search space holds no new point" in captured.err
    assert json.loads(captured.out)["completed"] == 2  # the front and its trials are still reported


def test_repeats_true_runs_a_drawn_repeat(tiny_space: Any, tmp_path: Path) -> None:
    space, storage = _two_point_space(tiny_space, repeats=True), f"sqlite:///{tmp_path / 'study.db'}"
    search(space, trials=3, storage=storage, out_dir=tmp_path, show_progress=False)
    params = _completed_params(storage, "tiny")
    assert len(params) == 3 and len({p["mlp.hidden_width"] for p in params}) == 2


def test_repeats_must_be_a_boolean(tiny_space: Any) -> None:
    text = _two_point_space(tiny_space).read_text().replace("repeats: false", "repeats: 1")
    with pytest.raises(ConfigError, match=r"space\.yaml: sampler\.repeats: expected true or false, got 1"):
        load_space_text(text, "space.yaml")


# --- a study's fingerprint: a differing run is refused with a diff, ranges may change ---

def _study_with(tiny_space: Any, tmp_path: Path, text: str | None = None) -> tuple[Any, str]:
    path = tiny_space()
    if text is not None:
        path.write_text(text)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return create_study(load_space_text(path.read_text(), "tiny.yaml"), storage, "tiny", tmp_path, get_registry()), storage


@pytest.mark.parametrize("old, new, line", [
    ("\nseed: 0", "\nseed: 1", "seed: 0 -> 1"),  # another dataset or split: test_search's dataset check
    ("batch_size: 128", "batch_size: 64", "training.batch_size.value: 128 -> 64"),
    ("lr: {low: 3.0e-3, high: 1.0e-2, log: true}", "lr: {low: 3.0e-3, high: 1.0e-2}", "training.lr.log: true -> false"),
    ("latency: {batch_size: 32,", "latency: {batch_size: 16,", "latency.batch_size: 32 -> 16"),
    ("compressors: []", "compressors: [{name: uniform, params: {bits: 8}}]", "compressors: [] -> [{"),
])
def test_a_run_that_defines_trials_differently_is_refused_with_a_diff(tiny_space: Any, tmp_path: Path, old: str,
                                                                     new: str, line: str) -> None:
    _, storage = _study_with(tiny_space, tmp_path)
    text = tiny_space().read_text()
    assert old in text
    with pytest.raises(ConfigError, match="another definition of its trials") as info:
        create_study(load_space_text(text.replace(old, new), "tiny.yaml"), storage, "tiny", tmp_path, get_registry())
    assert f"\n  {line}" in str(info.value)


def test_the_same_space_continues_silently(tiny_space: Any, tmp_path: Path, recwarn: Any) -> None:
    from vae_automl.fingerprint import CHANGES_ATTR

    _, storage = _study_with(tiny_space, tmp_path)
    study = create_study(load_space_text(tiny_space().read_text().replace("trials: 4", "trials: 9"), "tiny.yaml"),
                         storage, "tiny", tmp_path, get_registry())
    assert CHANGES_ATTR not in study.user_attrs and not [w for w in recwarn if "changed ranges" in str(w.message)]


def test_a_narrowed_range_continues_and_is_noted(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.fingerprint import CHANGES_ATTR
    from vae_automl.study import SPACE_ATTR

    _, storage = _study_with(tiny_space, tmp_path)
    narrowed = tiny_space().read_text().replace("high: 1.0e-2, log: true", "high: 5.0e-3, log: true").replace(
        "hidden_width: {low: 8, high: 24", "hidden_width: {low: 8, high: 32")
    with pytest.warns(UserWarning, match=r"continues with changed ranges \(.*training\.lr\.high: 0\.01 -> 0\.005"):
        study = create_study(load_space_text(narrowed, "tiny.yaml"), storage, "tiny", tmp_path, get_registry())
    [entry] = study.user_attrs[CHANGES_ATTR]
    assert {"path": "training.lr.high", "old": 0.01, "new": 0.005} in entry["changes"]
    assert {"path": "architectures.mlp.params.hidden_width.high", "old": 24, "new": 32} in entry["changes"]
    assert study.user_attrs[SPACE_ATTR] == narrowed  # workers sample the new ranges


def test_changed_choices_are_a_range_change_but_a_new_option_is_not() -> None:
    from vae_automl.fingerprint import diff

    old = {"training": {"capture": {"kind": "categorical", "choices": ["on", "off"]}},
           "compressors": [{"optional": False, "options": {"uniform": {}}}]}
    new = {"training": {"capture": {"kind": "categorical", "choices": ["on"]}},
           "compressors": [{"optional": False, "options": {"uniform": {}, "kmeans": {}}}]}
    changes = {c.path: c.range_only for c in diff(old, new)}
    assert changes == {"training.capture.choices": True, "compressors.0.options.kmeans": False}


def test_a_non_finite_objective_fails_the_trial_with_its_name(tiny_space: Any, tmp_path: Path,
                                                              register_plugin: Any) -> None:
    from vae_automl.components import Objective
    from vae_automl.plugin_manager import hookimpl

    class NanObjective(Objective):
        name = "always_nan"

        def measure(self, ctx: Any) -> float:
            return float("nan")

    class Plugin:
        @hookimpl
        def register_objectives(self, register: Any) -> None:
            register(NanObjective())

    register_plugin(Plugin())
    space = tiny_space(max_epochs=1)
    space.write_text(space.read_text().replace("objectives: [test_elbo_nats, size_bytes]",
                                               "objectives: [test_elbo_nats, always_nan]"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search(space, trials=1, storage=storage, out_dir=tmp_path, show_progress=False)
    trials = _trials(storage, "tiny")
    assert trials and all(t.state == STATES.FAIL for t in trials)
    assert trials[0].user_attrs[FAILURE_ATTR] == "objective 'always_nan' measured nan"


# --- two processes started together on an empty study draw different points; one alone stays reproducible ---

def _first_draws(space_path: Path, storage: str, tmp_path: Path, processes: int) -> list[dict[str, Any]]:
    """Each of ``processes`` opens the study with the same seeded sampler (as two drivers started in the same second
    do), asks its first trial, and draws it as the backends do (the seeder, then the space's suggest)."""
    from vae_automl.backends.base import SearchPolicy
    from vae_automl.config import load_space

    space = load_space(space_path)
    create_study(space, storage, "tiny", tmp_path, get_registry())
    opened = []
    for _ in range(processes):  # every one opens before any asks: nobody sees another's trial
        policy = SearchPolicy(space, get_registry())
        opened.append((policy.seeder(), optuna.load_study(study_name="tiny", storage=storage, sampler=policy.sampler())))
    trials = [(seed, study, study.ask()) for seed, study in opened]
    draws = []
    for seed, study, trial in trials:
        seed(study, trial.number)
        draws.append(space_mod.suggest(trial, space))
    return draws


def test_drivers_started_together_on_an_empty_study_draw_different_points(tiny_space: Any, tmp_path: Path) -> None:
    space = tiny_space()
    assert "sampler: {name: random, seed: 0}" in space.read_text()
    draws = _first_draws(space, f"sqlite:///{tmp_path / 'a.db'}", tmp_path, processes=3)
    assert len({json.dumps(d, sort_keys=True) for d in draws}) == 3
    # reproducible: the first trial of a fresh study is seed 0's first draw, the second process's is seed 0 + 1's
    (alone,) = _first_draws(space, f"sqlite:///{tmp_path / 'b.db'}", tmp_path, processes=1)
    assert alone == draws[0]
    from vae_automl.config import load_space

    loaded = load_space(space)
    control = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    assert space_mod.suggest(control.ask(), loaded) == draws[1]


def test_the_ray_searcher_seeds_its_sampler_from_its_first_trial(tiny_space: Any, tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    from vae_automl.backends.base import SearchPolicy
    from vae_automl.backends.ray import NUMBER_KEY, WANTS_BASELINE_KEY, _DefineByRun, _make_searcher_class
    from vae_automl.config import load_space
    from vae_automl.progress import Progress

    space = load_space(tiny_space())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(space, storage, "tiny", tmp_path, get_registry())
    study.ask()  # another process's trial 0, already running
    policy = SearchPolicy(space, get_registry())
    searcher = _make_searcher_class()(
        space=_DefineByRun(space), metric=list(space.objectives), mode=["min", "min"], sampler=policy.sampler(),
        study_name="tiny", storage=open_storage(storage), objectives=tuple(space.objectives), target_completed=2,
        done=0, max_failures=3, deadline=None, progress=Progress(None, space.objectives, (), enabled=False), policy=policy,
    )
    config = searcher.suggest("t0")
    assert isinstance(config, dict) and config[NUMBER_KEY] == 1
    drawn = {k: v for k, v in config.items() if k not in (NUMBER_KEY, WANTS_BASELINE_KEY)}
    control = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0 + 1))
    assert space_mod.suggest(control.ask(), space) == drawn
    searcher.fail_in_flight("test over")
    searcher.pool.shutdown()
