"""``hvi`` runs a searched ``training.epochs`` at the top of its range while longer training pays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl import samplers
from vae_automl import space as space_mod
from vae_automl.config import SamplerConfig, load_space, load_space_text
from vae_automl.errors import ConfigError
from vae_automl.hvi_sampler import HypervolumeSampler, _DrawTrial, _longer_training_pays
from vae_automl.record import CURVE_ATTR, RECORD_ATTR
from vae_automl.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
MIN2 = ["minimize", "minimize"]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()


def falling(epochs: int) -> list[float]:
    return [100.0 / (1 + e) for e in range(epochs)]


def overfitting(epochs: int) -> list[float]:
    """Lowest at epoch 5, then 20% above it by the end."""
    return [100.0 - e if e < 5 else 95.0 + 19.0 * (e - 4) / max(epochs - 5, 1) for e in range(epochs)]


def run(space: Any, sampler: optuna.samplers.BaseSampler, trials: int, curve: Any) -> list[dict[str, Any]]:
    """``trials`` completed trials of ``space``, each storing ``curve(epochs)`` as the backends store theirs."""
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    out = []
    for _ in range(trials):
        trial = study.ask()
        params = space_mod.suggest(trial, space)
        trial.set_user_attr(CURVE_ATTR, curve(params["training.epochs"]))
        study.tell(trial, [30.0 - params["mlp.hidden_width"] / 100, float(params["mlp.hidden_width"])])
        out.append(params)
    return out


def quick(text: str = QUICK) -> Any:
    return load_space_text(text, "quick.yaml", get_registry())


def test_every_trial_trains_for_the_top_of_the_range_while_curves_fall() -> None:
    """The random start-up (8) and the guided trials after it: all at quick.yaml's top, 30 epochs."""
    drawn = run(quick(), samplers.make_sampler(SamplerConfig(name="auto", seed=0), quick()), 12, falling)
    assert [p["training.epochs"] for p in drawn] == [30] * 12
    assert len({p["mlp.hidden_width"] for p in drawn}) > 6  # the other parameters are still searched


def test_curves_that_rise_at_their_end_release_epochs() -> None:
    drawn = run(quick(), samplers.make_sampler(SamplerConfig(name="auto", seed=0), quick()), 12, overfitting)
    epochs = [p["training.epochs"] for p in drawn]
    assert epochs[0] == 30  # no curve yet
    assert len(set(epochs[1:])) > 3 and min(epochs) < 20


@pytest.mark.parametrize(
    "text",
    [QUICK.replace("sampler: {name: auto, seed: 0}", "sampler: {name: auto, seed: 0, full_epochs: false}")],
    ids=["full_epochs false"],
)
def test_full_epochs_false_searches_epochs(text: str) -> None:
    space = quick(text)
    assert space.sampler.full_epochs is False
    epochs = [p["training.epochs"] for p in run(space, samplers.make_sampler(space.sampler, space), 12, falling)]
    assert len(set(epochs)) > 3


def test_the_budget_parameter_is_named_only_where_epochs_are_searched() -> None:
    assert samplers.make_sampler(SamplerConfig(name="hvi", seed=0), quick()).budget_param == "training.epochs"
    fixed = quick(QUICK.replace("epochs: {low: 10, high: 30}", "epochs: 12"))
    assert samplers.make_sampler(SamplerConfig(name="hvi", seed=0), fixed).budget_param is None
    off = SamplerConfig(name="hvi", seed=0, full_epochs=False)
    assert samplers.make_sampler(off, quick()).budget_param is None


def test_full_epochs_must_be_a_boolean() -> None:
    text = QUICK.replace("sampler: {name: auto, seed: 0}", "sampler: {name: auto, full_epochs: 1}")
    with pytest.raises(ConfigError, match=r"quick\.yaml: sampler\.full_epochs: expected true or false, got 1"):
        quick(text)


@pytest.mark.parametrize(
    ("suggest", "top"),
    [
        (lambda t: t.suggest_int("e", 10, 30), 30),
        (lambda t: t.suggest_int("e", 10, 30, step=5), 30),
        (lambda t: t.suggest_int("e", 4, 64, log=True), 64),
        (lambda t: t.suggest_float("e", 0.5, 2.5), 2.5),
        (lambda t: t.suggest_categorical("e", [20, 40, 10]), 40),
    ],
    ids=["int", "int step", "int log", "float", "numeric choices"],
)
def test_a_draw_takes_the_top_of_the_budget_parameter(suggest: Any, top: float) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    assert {suggest(_DrawTrial(rng, top="e")) for _ in range(20)} == {top}
    assert len({suggest(_DrawTrial(rng, top="other")) for _ in range(20)}) > 1
    assert {suggest(_DrawTrial(rng, {"e": top}, scale=0.25, flip=1.0, top="e")) for _ in range(20)} == {top}


def _done(curve: list[float] | None, patience: int | None = None) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {CURVE_ATTR: curve} if curve is not None else {}
    # the stored record's config, as run_trial writes it (TrialSpec.as_dict: training holds every key, patience too)
    attrs[RECORD_ATTR] = {"config": {"training": {"epochs": len(curve or []), "patience": patience}}}
    return optuna.trial.create_trial(values=[1.0, 1.0], user_attrs=attrs)


@pytest.mark.parametrize(
    ("curves", "pays"),
    [
        ([], True),  # no evidence yet
        ([None, []], True),  # trials that stored no curve (a cached base from an old version) are not evidence
        ([[3.0, 2.0, 1.0]], True),
        ([[3.0, 1.0, 1.0099]], True),  # within 1% of the lowest: noise
        ([[3.0, 1.0, 1.011]], False),
        ([[3.0, 1.0, 1.5], [3.0, 2.0, 1.0]], True),  # exactly half still falling
        ([[3.0, 1.0, 1.5], [3.0, 1.0, 1.5], [3.0, 2.0, 1.0]], False),
        # every completed trial counts, the earliest too: 2 of 5 end at their lowest
        ([[3.0, 1.0, 1.5], [3.0, 1.0, 1.5], [3.0, 1.0, 1.5], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], False),
        ([[-3.0, -4.0, -3.98]], True),  # a negative loss: the tolerance is a share of its size
        ([[-3.0, -4.0, -3.9]], False),
    ],
)
def test_longer_training_pays_while_at_least_half_the_curves_end_near_their_lowest(curves: list[Any], pays: bool) -> None:
    assert _longer_training_pays([_done(c) for c in curves]) is pays


def test_a_sampler_built_without_a_budget_parameter_is_unchanged() -> None:
    """The HPOLib replay and user draw functions: no parameter is pinned."""

    def draw(trial: Any) -> None:
        trial.suggest_int("training.epochs", 1, 9)
        trial.suggest_float("x", 0.0, 1.0)

    study = optuna.create_study(directions=MIN2, sampler=HypervolumeSampler(draw, seed=0, n_startup_trials=3))
    seen = set()
    for _ in range(8):
        trial = study.ask()
        draw(trial)
        seen.add(trial.params["training.epochs"])
        study.tell(trial, [trial.params["x"], 1 - trial.params["x"]])
    assert len(seen) > 2


def test_quick_yaml_gets_it() -> None:
    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    assert space.sampler.full_epochs is True


def test_once_every_point_at_the_top_ran_shorter_ones_are_drawn() -> None:
    """Two widths, 1-3 epochs: six points. After both widths ran at 3 epochs, the space is not exhausted (README:
    the run ends only when the space has no new point left), so the next four asks are the four shorter points
    instead of repeats of a top one."""

    def draw(trial: Any) -> None:
        trial.suggest_categorical("width", [16, 32])
        trial.suggest_int("training.epochs", 1, 3)

    sampler = HypervolumeSampler(draw, seed=0, n_startup_trials=2, budget_param="training.epochs")
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    for _ in range(6):
        trial = study.ask()
        draw(trial)
        trial.set_user_attr(CURVE_ATTR, falling(trial.params["training.epochs"]))
        study.tell(trial, [float(trial.params["width"]), 1.0 / trial.params["training.epochs"]])
    seen = [(t.params["width"], t.params["training.epochs"]) for t in study.trials]
    assert {e for _, e in seen[:2]} == {3}
    assert sorted(seen) == [(w, e) for w in (16, 32) for e in (1, 2, 3)]


@pytest.mark.parametrize(("patience", "pays"), [(None, False), (2, True)])
def test_a_curve_trained_with_patience_ends_at_its_best_epoch(patience: int | None, pays: bool) -> None:
    """With ``training.patience`` the trainer restores the weights of the lowest validation loss: a curve that rose
    after it (overfitting, or the patience epochs themselves) did not make the model worse, so a longer budget
    still cannot hurt and it is no reason to search shorter ones."""
    rising = [3.0, 1.0, 1.5, 1.6]
    assert _longer_training_pays([_done(rising, patience) for _ in range(3)]) is pays


@pytest.mark.parametrize(
    ("sampler", "full_epochs"),
    [("{name: hvi, full_epochs: true}", True), ("{name: tpe, full_epochs: false}", False), ("{name: tpe}", True)],
)
def test_full_epochs_is_accepted_where_it_means_what_it_says(sampler: str, full_epochs: bool) -> None:
    """``true`` is refused for a sampler that would ignore it (test_config's refusals); ``false`` is what every other
    sampler does anyway, and the default stays true (only hvi reads it)."""
    space = quick(QUICK.replace("sampler: {name: auto, seed: 0}", f"sampler: {sampler}"))
    assert space.sampler.full_epochs is full_epochs


@pytest.mark.parametrize(
    "objectives", [["size_bytes"], ["test_elbo_nats", "size_bytes"], ["test_elbo_nats", "size_bytes", "latency_ms"]]
)
def test_auto_refuses_full_epochs_exactly_where_it_picks_another_sampler(objectives: list[str]) -> None:
    """config.py repeats samplers.choose's rule (it cannot import samplers): the two must agree."""
    text = QUICK.replace("sampler: {name: auto, seed: 0}", "sampler: {name: auto, full_epochs: true}")
    text = text.replace("objectives: [test_elbo_nats, size_bytes]", f"objectives: [{', '.join(objectives)}]")
    if samplers.choose(objectives=len(objectives)) == "hvi":
        assert quick(text).sampler.full_epochs is True
    else:
        with pytest.raises(ConfigError, match=r"quick\.yaml: sampler\.full_epochs: only hvi .* auto picks tpe"):
            quick(text)


def test_a_budget_parameter_of_other_than_numbers_is_drawn_freely() -> None:
    """Only a numeric range or numeric choices have a top: a choice of words, or numbers with null, is drawn at random."""
    import numpy as np

    rng = np.random.default_rng(0)
    for choices in (["short", "long"], [10, None]):
        assert {_DrawTrial(rng, top="e").suggest_categorical("e", choices) for _ in range(30)} == set(choices)


def test_stopped_and_running_trials_curves_are_no_evidence() -> None:
    """A trial stopped at a rung (its curve cut there, still falling) or still running tells nothing of how a curve
    ends: three completed trials that overfit release epochs even beside more stopped ones whose curves fall."""

    def draw(trial: Any) -> None:
        trial.suggest_int("training.epochs", 1, 30)
        trial.suggest_float("x", 0.0, 1.0)

    sampler = HypervolumeSampler(draw, seed=0, n_startup_trials=100, budget_param="training.epochs")
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    for k in range(8):
        trial = study.ask()
        draw(trial)
        if k < 3:
            trial.set_user_attr(CURVE_ATTR, overfitting(30))
            study.tell(trial, [trial.params["x"], 1 - trial.params["x"]])
        elif k < 7:
            trial.set_user_attr(CURVE_ATTR, falling(4))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.set_user_attr(CURVE_ATTR, falling(2))  # running
    drawn = []
    for _ in range(10):
        trial = study.ask()
        draw(trial)
        drawn.append(trial.params["training.epochs"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # no curve: the evidence stays as it was
    assert len(set(drawn)) > 3


def _stored_attrs(backend: str, curve: list[float], patience: int | None) -> dict[str, Any]:
    """The user attributes a completed trial gets from ``backend``: its record's, through Ray's result as well."""
    import json

    from vae_automl.backends.ray import RECORD_KEY, _outcome
    from vae_automl.record import TrialRecord

    base = {
        "cache_key": "k",
        "params": 10,
        "epochs_run": len(curve),
        "stopped_early": False,
        "train_seconds": 1.0,
        "samples_per_s": 9.0,
        "captured": False,
        "validation_curve": curve,
        "cache_hit": True,
    }
    latency = {"batch_size": 128, "target": "cpu", "repeats": 30, "runtime": "torch"}
    training = {"epochs": len(curve), "lr": 1e-3, "patience": patience}
    record = TrialRecord.from_dict({
        "trial": 0, "params": {}, "config": {"training": training, "seed": 0}, "model_config": {}, "objectives": {"a": 1.0},
        "metrics": {"a": 1.0}, "data": {}, "device": "cpu", "latency": latency, "base": base,
        "artifact": "/x/trial-0.safetensors", "artifact_sha256": "0" * 64, "seconds": 1.0,
    })  # fmt: skip
    if backend == "ray":
        return _outcome({RECORD_KEY: json.dumps(record.as_dict())}, False, ("a",))[2]
    return record.to_user_attrs()  # what backends/optuna.py's objective sets


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_hvi_reads_the_curve_and_patience_each_backend_stores(backend: str) -> None:
    """A completed trial's curve (a cached base's too: the cache keeps it) and its patience reach hvi from either backend."""
    rising = overfitting(12)
    trials = [optuna.trial.create_trial(values=[1.0], user_attrs=_stored_attrs(backend, rising, None))]
    assert _longer_training_pays(trials) is False
    trials = [optuna.trial.create_trial(values=[1.0], user_attrs=_stored_attrs(backend, rising, 3))]
    assert _longer_training_pays(trials) is True


def _ran(epochs: int, curve: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        values=[1.0, 1.0],
        params={"training.epochs": epochs},
        distributions={"training.epochs": optuna.distributions.IntDistribution(10, 30)},
        user_attrs={CURVE_ATTR: curve},
    )


def test_a_shorter_run_that_ends_at_its_lowest_is_no_evidence_for_the_top() -> None:
    """The two runs that reached the top overfit; three 12-epoch runs end at their lowest, stopped before the model
    could overfit. Counting those would pin every trial at 30 again (3 of 5), and in a space whose models overfit
    near the top the search would swing between the top and free draws, spending about half its trials at the top."""
    top_overfit, short_falling = [_ran(30, overfitting(30)) for _ in range(2)], [_ran(12, falling(12)) for _ in range(3)]
    assert _longer_training_pays(top_overfit + short_falling, "training.epochs") is False
    # a shorter run that overfits is evidence, and a run at the top that falls is
    assert _longer_training_pays([_ran(30, falling(30)), _ran(12, overfitting(12))], "training.epochs") is True
    assert _longer_training_pays([_ran(30, falling(30)), *[_ran(12, overfitting(12))] * 2], "training.epochs") is False
    # no budget parameter named: every curve counts (HPOLib's replay, a user draw function)
    assert _longer_training_pays(top_overfit + short_falling) is True


def test_a_space_that_overfits_before_the_top_stays_released() -> None:
    """Every curve is lowest at epoch 26 of 10-30 and 11% above it at 30: after the first trial at the top, epochs
    are drawn freely and stay so (the random start-up here). Counting the shorter runs' curves, most of which end
    before epoch 26, put every other trial back at 30 (8-11 of these 23 on seeds 0-4)."""

    def draw(trial: Any) -> None:
        trial.suggest_int("training.epochs", 10, 30)
        trial.suggest_float("x", 0.0, 1.0)

    def curve(epochs: int) -> list[float]:
        return [100.0 - e if e < 26 else 75.0 + 2.0 * (e - 25) for e in range(epochs)]

    sampler = HypervolumeSampler(draw, seed=0, n_startup_trials=100, budget_param="training.epochs")
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    for _ in range(24):
        trial = study.ask()
        draw(trial)
        trial.set_user_attr(CURVE_ATTR, curve(trial.params["training.epochs"]))
        study.tell(trial, [trial.params["x"], 1 - trial.params["x"]])
    epochs = [t.params["training.epochs"] for t in study.trials]
    assert epochs[0] == 30 and epochs[1:].count(30) <= 3, epochs


def test_a_budget_parameter_without_a_top_counts_every_curve() -> None:
    words = optuna.distributions.CategoricalDistribution(["short", "long"])
    trial = optuna.trial.create_trial(
        values=[1.0, 1.0], params={"e": "short"}, distributions={"e": words}, user_attrs={CURVE_ATTR: falling(3)}
    )
    assert _longer_training_pays([trial, _done(overfitting(12))], "e") is True
