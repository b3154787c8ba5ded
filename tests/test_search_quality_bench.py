"""benchmarks/search_quality.py's own arithmetic, against figures worked out by hand."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import search_quality  # noqa: E402
from search_quality import Outcome  # noqa: E402


class BestOfFirst:
    """A stand-in problem whose hypervolume is 10 less the lowest first objective so far."""

    def hypervolume(self, values: Sequence[Sequence[float]]) -> float:
        return 10.0 - min(v[0] for v in values) if len(values) else 0.0


def test_perfect_stopping_runs_only_the_trials_that_raised_the_hypervolume() -> None:
    # trials 1, 2 and 4 raise it (10-3, 10-2, 10-1); trial 3 (2.5) and the stopped trial 5 do not
    run = [Outcome([3.0], 30), Outcome([2.0], 30), Outcome([2.5], 30), Outcome([1.0], 30), Outcome(None, 4)]
    other = [Outcome([1.0], 30), Outcome([4.0], 20)]  # raises it once; the second trial trained 20 epochs
    bound = search_quality.perfect_stopping(BestOfFirst(), [run, other], budget=100.0)  # type: ignore[arg-type]
    assert bound["front_improving_trials_mean"] == 2.0
    ratio = bound["perfect_stopping_epochs_ratio"]
    # run: 3 x 30 + the rung for trial 3 + min(rung, 4) for the one stopped at epoch 4; other: 30 + the rung
    assert ratio["3"] == pytest.approx(((90 + 3 + 3) / 100 + (30 + 3) / 100) / 2)
    assert ratio["5"] == pytest.approx(((90 + 5 + 4) / 100 + (30 + 5) / 100) / 2)
    assert ratio["10"] == pytest.approx(((90 + 10 + 4) / 100 + (30 + 10) / 100) / 2)


def test_first_reaching_counts_trials_from_one() -> None:
    import numpy as np

    assert search_quality.first_reaching(np.array([0.1, 0.5, 0.5, 0.9]), 0.5) == 2
    assert search_quality.first_reaching(np.array([0.1, 0.2]), 0.5) is None


def test_full_budget_random_trains_every_trial_for_the_top_of_the_epochs_range() -> None:
    import optuna

    sampler = search_quality.make_sampler("random-full", None, 0, 10)  # type: ignore[arg-type]
    study = optuna.create_study(sampler=sampler)
    epochs, widths, steps = set(), set(), set()
    for _ in range(30):
        trial = study.ask()
        epochs.add(trial.suggest_int("training.epochs", 10, 30))
        steps.add(trial.suggest_int("training.epochs_stepped", 10, 30, step=4))  # another name: drawn freely
        widths.add(trial.suggest_int("mlp.hidden_width", 16, 256, log=True))
        study.tell(trial, 0.0)
    assert epochs == {30}
    assert len(widths) > 10 and len(steps) > 2  # everything else is drawn at random


def test_the_replay_charges_no_epochs_for_a_base_a_completed_trial_trained() -> None:
    """As the base-model cache does: the same base exactly (another bit width) is free and passes no rung; a base
    that only rounds to the same grid point (another learning rate) trains again; a stopped trial trains no base."""
    import optuna

    from vae_automl.config import PrunerConfig

    problem = search_quality.problem_named("quick")
    base = {"mlp.hidden_layers": 1, "mlp.hidden_width": 64, "mlp.latent_dim": 4, "mlp.activation": "relu",
            "training.epochs": 30, "training.lr": 1.0e-3}
    study = optuna.create_study(directions=["minimize", "minimize"])
    state = search_quality.SearchState()
    stop_everything = PrunerConfig(name="pareto", warmup_epochs=10, reduction_factor=3, min_trials=1)

    def evaluate(params: dict[str, object], stopping: PrunerConfig | None = None) -> Outcome:
        study.enqueue_trial(params)
        return search_quality.ask_and_tell(study, problem, stopping, state)

    first = evaluate({**base, "compressor0": "uniform", "compressor0.uniform.bits": 8})
    assert (first.epochs, first.reused_base) == (30, False)
    again = evaluate({**base, "compressor0": "uniform", "compressor0.uniform.bits": 4}, stop_everything)
    assert (again.epochs, again.reused_base) == (0, True) and again.values is not None
    near = {**base, "training.lr": 1.01e-3}
    assert problem.table.index_of(near)[0] == problem.table.index_of(base)[0]  # the same grid base
    nearby = evaluate({**near, "compressor0": "none"})
    assert (nearby.epochs, nearby.reused_base) == (30, False)
    # a trial stopped at its rung leaves no trained base behind: the next one on it trains again
    other = {**base, "mlp.hidden_width": 16, "compressor0": "none"}
    state.rung_points[10] = [[0.0, 0.0]] * 5  # peers that dominate any point: it is stopped at epoch 10
    stopped = evaluate(other, stop_everything)
    assert (stopped.values, stopped.epochs) == (None, 10)
    retrained = evaluate({**other, "compressor0": "uniform", "compressor0.uniform.bits": 8})
    assert (retrained.epochs, retrained.reused_base) == (30, False)


def test_the_tables_count_the_trials_that_reused_a_base() -> None:
    """Random search never draws a base exactly twice in 20 trials of a continuous space; the default does."""
    problem = search_quality.problem_named("quick")
    runner = search_quality.Runner(1)
    block = search_quality.compare_samplers(problem, 2, 20, runner, lambda message: None, ["random", "default"])
    reused = block["reused_bases_mean"]
    assert reused["random"] == 0.0 and reused["default"] > 0.0
    rows = {line.split(" | ")[0]: line for line in search_quality.format_block(block).splitlines()}
    assert rows["| default"].endswith(f" | {reused['default']:.1f} |")
    assert "| bases reused of 100 |" in search_quality.format_block(block)


def test_an_unstopped_row_runs_another_sampler_without_stopping_until_the_same_epochs() -> None:
    """The stopping sampler's own search as an unstopped row is the 'none' row again (measured on the epoch grid,
    where the mean curve may reach the target before the last trial, not at the budget by definition); random
    search, whose trials train 10-30 epochs, runs more trials to spend the same epochs, and none is stopped."""
    from vae_automl.config import PrunerConfig

    problem = search_quality.problem_named("quick")
    rule = PrunerConfig(name="pareto", warmup_epochs=10, reduction_factor=3, min_trials=1, score="base")
    es = search_quality.compare_early_stopping(problem, 2, 20, search_quality.Runner(1), lambda message: None,
                                               [rule], sampler="random-full", unstopped=["random-full", "random"])
    assert es["full_budget_epochs_mean"] == 600.0  # 20 trials x 30 epochs
    own, other = search_quality.unstopped_label("random-full"), search_quality.unstopped_label("random")
    assert es["epochs_ratio"]["none"] == 1.0 and 0.0 < es["epochs_ratio"][own] <= 1.0
    assert es["seeds_reaching_target_at_half_epochs"][own] == es["seeds_reaching_target_at_half_epochs"]["none"]
    assert es["hv_at_epoch_fraction"][own] == es["hv_at_epoch_fraction"]["none"]
    assert es["stopped_fraction"][own] == es["stopped_fraction"][other] == 0.0
    assert es["trials_mean"][other] > 20
    assert es["rungs_epochs"] == {"10/3/1/base": [10]} and es["rules"][other] is None
    rows = {line.split(" | ")[0] for line in search_quality.format_early_stopping(es).splitlines()}
    assert {"| none", "| 10/3/1/base", f"| {own}", f"| {other}"} <= rows


def test_unstopped_names_a_known_sampler(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        search_quality.main(["--replay", "--unstopped", "defualt"])
    assert exit_info.value.code == 2
    assert "--unstopped: invalid choice: 'defualt'" in capsys.readouterr().err
