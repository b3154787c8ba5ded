"""Pareto-aware successive halving: the rung decisions, and a search that resumes with stopped trials in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl.config import PrunerConfig, load_space_text
from vae_automl.errors import ConfigError
from vae_automl.early_stopping import (
    FINE_TUNE_RUNG,
    RUNG_VALUES_ATTR,
    STOPPED_AT_ATTR,
    decide,
    layers,
    peers_at,
    rung_name,
    rung_score,
    rungs,
)

MIN2 = ["minimize", "minimize"]
RULE = PrunerConfig(name="pareto", warmup_epochs=3, min_trials=4, reduction_factor=3)
# (validation loss, size_bytes) of trials at one rung; the front is (10, 900), (20, 500), (30, 100)
PEERS = [[10.0, 900.0], [20.0, 500.0], [30.0, 100.0], [12.0, 950.0], [25.0, 600.0], [35.0, 150.0],
         [40.0, 1000.0], [45.0, 990.0]]


def test_rungs_grow_by_the_reduction_factor_below_the_trial_budget() -> None:
    assert rungs(RULE, 30) == [3, 9, 27]
    assert rungs(RULE, 27) == [3, 9]  # a trial ending at a rung has nothing left to save there
    assert rungs(RULE, 3) == []
    assert rungs(PrunerConfig(name="none", warmup_epochs=3), 30) == []


def test_layers_are_non_dominated_sorting() -> None:
    assert layers([[1, 5], [2, 2], [5, 1], [3, 3], [6, 6]], MIN2) == [0, 0, 0, 1, 2]
    assert layers([[1, 1], [1, 1]], MIN2) == [0, 0]  # duplicates share a layer


def test_a_non_dominated_trial_is_never_stopped() -> None:
    # the worst validation loss of the rung, but the smallest model: on the rung's front
    for point in ([99.0, 50.0], [5.0, 2000.0], [15.0, 700.0]):
        decision = decide(point, PEERS * 5, MIN2, RULE)
        assert decision.rank == 0 and not decision.stop


def test_a_dominated_trial_is_stopped() -> None:
    decision = decide([50.0, 1200.0], PEERS, MIN2, RULE)  # dominated by every peer
    assert decision.stop and decision.rank > 0
    assert decision.better >= decision.keep == 3  # ceil(9 / 3)
    assert "epoch-9 rung" in decision.reason(9)


def test_a_dominated_trial_in_the_kept_share_goes_on() -> None:
    # dominated only by (10, 900): layer 1, with 3 front points ahead of it, but the quota keeps 3 of 3 ... of 9
    point = [11.0, 920.0]
    assert decide(point, PEERS, MIN2, RULE).stop  # 3 better >= keep 3
    assert not decide(point, PEERS, MIN2, PrunerConfig(name="pareto", warmup_epochs=3, min_trials=4,
                                                       reduction_factor=2)).stop  # keep 5


def test_the_quota_boundary_one_better_point_decides() -> None:
    # (2, 11) is dominated by (1, 10) alone; 9 points at the rung keep ceil(9 / 3) = 3
    far = [[20.0, 20.0]]
    two_ahead = decide([2.0, 11.0], [[1.0, 10.0], [10.0, 1.0], *far * 6], MIN2, RULE)
    assert (two_ahead.rank, two_ahead.better, two_ahead.keep) == (1, 2, 3) and not two_ahead.stop
    three_ahead = decide([2.0, 11.0], [[1.0, 10.0], [10.0, 1.0], [3.0, 3.0], *far * 5], MIN2, RULE)
    assert (three_ahead.rank, three_ahead.better, three_ahead.keep) == (1, 3, 3) and three_ahead.stop


def test_a_point_equal_to_a_front_point_is_on_the_front() -> None:
    # weak dominance does not stop: a tie with the best trial of the rung is non-dominated
    assert not decide([10.0, 900.0], PEERS * 5, MIN2, RULE).stop


def test_no_verdict_without_enough_peers() -> None:
    assert not decide([50.0, 1200.0], PEERS[:3], MIN2, RULE).stop
    assert decide([50.0, 1200.0], PEERS[:4], MIN2, RULE).stop


def test_peers_are_read_at_the_same_rung_only() -> None:
    stored = [{"3": [1.0, 2.0], "9": [0.5, 2.0]}, {"3": [3.0, 1.0], FINE_TUNE_RUNG: [7.0, 1.0]}, {}]
    assert peers_at(stored, 3) == [[1.0, 2.0], [3.0, 1.0]]
    assert peers_at(stored, "9") == [[0.5, 2.0]]
    assert peers_at(stored, FINE_TUNE_RUNG) == [[7.0, 1.0]]
    assert rung_name(3) == "epoch-3 rung" and rung_name(FINE_TUNE_RUNG) == "before-fine-tuning rung"


def test_the_rung_score_is_the_base_loss_or_the_compressed_one() -> None:
    calls: list[int] = []

    def compressed() -> float:
        calls.append(1)
        return 7.0

    assert rung_score(RULE, 5.0, compressed) == 5.0 and not calls  # base: the compressed model is never built
    assert rung_score(PrunerConfig(name="pareto", score="compressed"), 5.0, compressed) == 7.0 and calls == [1]


def test_the_pruner_score_key_is_checked() -> None:
    base = "architecture: {mlp: {latent_dim: 2}}\nobjectives: [test_elbo_nats]\npruner: {name: pareto, score: %s}\n"
    assert load_space_text(base % "compressed", "s.yaml").pruner.score == "compressed"
    assert load_space_text(base % "base", "s.yaml").pruner.score == "base"
    with pytest.raises(ConfigError, match=r"s.yaml: pruner.score"):
        load_space_text(base % "fine_tuned", "s.yaml")


SCORED = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 3, batch_size: 64, lr: 5.0e-3}
compressors:
  - {name: distill, optional: true, params: {width_ratio: 0.5, epochs: 1}}
  - {name: magnitude_prune, params: {sparsity: {low: 0.1, high: 0.95}, finetune_epochs: 1}}
objectives: [test_elbo_nats]
"""


def test_the_compressed_score_is_the_pipeline_without_fine_tuning_and_leaves_the_base_alone(tmp_path: Path) -> None:
    import torch

    from vae_automl import trial as trial_mod
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.space import resolve
    from vae_automl.train import train_config_from

    space = load_space_text(SCORED, "s.yaml")
    env = trial_mod.prepare(space, tmp_path, get_registry(), get_plugin_manager())
    spec = resolve(space, {"compressor0": "none", "compressor1.magnitude_prune.sparsity": 0.9})
    config = train_config_from(spec.training)
    base, _ = trial_mod.train_base(env, spec, config, None)
    base.train()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    task = env.registry.tasks.get(space.task)
    score = trial_mod.compressed_validation_loss(env, base, spec, config)
    assert torch.equal(torch.get_rng_state(), rng) and base.training
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    pruned = trial_mod.compress(env, base, spec, config, fine_tuning=False)
    assert score == pytest.approx(task.validation_loss(pruned, env.data, config, spec.seed))
    base_loss = task.validation_loss(base, env.data, config, spec.seed)
    assert score > base_loss  # 90% of the weights gone, no fine-tuning: worse than the base
    # a distill stage is left out of the score (its student would be untrained), the rest of the pipeline kept
    distilled = resolve(space, {"compressor0": "distill", "compressor1.magnitude_prune.sparsity": 0.9})
    assert trial_mod._Scorer(env, distilled, config)(base) == pytest.approx(score)
    assert trial_mod.compressed_validation_loss(env, base, resolve(space, {"compressor0": "none",
        "compressor1.magnitude_prune.sparsity": 0.1}), config) < score


def test_cached_bases_are_stopped_before_fine_tuning(tmp_path: Path) -> None:
    from vae_automl.api import search

    path = tmp_path / "scored.yaml"
    # one architecture and training: every trial after the first reuses the cached base, so no epoch rung can
    # stop it; one objective, so the rung compares compressed losses alone and some trial surely loses
    path.write_text("name: scored\n" + SCORED.replace("  - {name: distill, optional: true, params: {width_ratio: 0.5, "
                                                        "epochs: 1}}\n", "")
                    + "sampler: {name: random, seed: 0}\n"
                    + "pruner: {name: pareto, warmup_epochs: 1, min_trials: 1, reduction_factor: 4, score: compressed}\n"
                    + "latency: {batch_size: 32, repeats: 1, warmup: 0}\ntrials: 6\n")
    result = search(path, out_dir=tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert result.completed == 6 and pruned, "the rule stopped nothing; the test needs stopped trials"
    for t in pruned:
        assert t.user_attrs[STOPPED_AT_ATTR] == FINE_TUNE_RUNG
        assert set(t.user_attrs[RUNG_VALUES_ATTR]) == {FINE_TUNE_RUNG, "1"} or \
            set(t.user_attrs[RUNG_VALUES_ATTR]) == {FINE_TUNE_RUNG}
    # every trial, kept or stopped, was scored at the rung (peers of the later ones)
    assert all(FINE_TUNE_RUNG in t.user_attrs.get(RUNG_VALUES_ATTR, {}) for t in trials)
    # a stopped trial scored worse there than the best trial that reached the rung before it
    for t in pruned:
        earlier = [u.user_attrs[RUNG_VALUES_ATTR][FINE_TUNE_RUNG][0] for u in trials if u.number < t.number]
        assert t.user_attrs[RUNG_VALUES_ATTR][FINE_TUNE_RUNG][0] > min(earlier)


@pytest.mark.study
def test_resuming_a_study_with_stopped_trials(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.api import search

    space = tiny_space(trials=6, max_epochs=6, pruner="pareto",
                       lr="{low: 1.0e-4, high: 3.0e-2, log: true}")
    # one objective: the rung compares validation losses alone, so some trials surely lose
    text = space.read_text().replace("warmup_epochs: 1, min_trials: 2",
                                     "warmup_epochs: 1, min_trials: 1, reduction_factor: 4")
    space.write_text(text.replace("objectives: [test_elbo_nats, size_bytes]", "objectives: [test_elbo_nats]"))
    out = tmp_path / "out"
    first = search(space, out_dir=out, show_progress=False)
    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    assert first.completed == 6 and pruned, "the rule stopped nothing; the test needs stopped trials"
    for trial in pruned:
        at = trial.user_attrs[STOPPED_AT_ATTR]
        assert str(at) in trial.user_attrs[RUNG_VALUES_ATTR]  # the rung values it was stopped on are kept
    second = search(space, trials=3, out_dir=out, show_progress=False)
    study = optuna.load_study(study_name=second.study_name, storage=second.storage)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    # three more completed: stopped trials do not use up the attempts a failing space is allowed
    assert second.completed == 9
    assert states.count(optuna.trial.TrialState.PRUNED) >= len(pruned)
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.FAIL not in states


@pytest.mark.study
def test_a_space_whose_trials_all_fail_still_ends(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.api import search

    # no time to train: every trial fails; the search stops after 3 failures per wanted trial
    space = tiny_space(trials=2, pruner="pareto", extra_training="  max_seconds: 0.001\n")
    result = search(space, out_dir=tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert result.completed == 0 and states == [optuna.trial.TrialState.FAIL] * 6


# --- boundaries of every comparison in the rule (issue 17) ---

def test_rung_boundaries() -> None:
    doubling = PrunerConfig(name="pareto", warmup_epochs=1, reduction_factor=2)
    assert rungs(doubling, 9) == [1, 2, 4, 8]
    assert rungs(doubling, 8) == [1, 2, 4]  # a rung at the last epoch saves nothing
    assert rungs(doubling, 2) == [1]
    assert rungs(doubling, 1) == []
    assert rungs(PrunerConfig(name="pareto", warmup_epochs=0, reduction_factor=2), 9) == []  # no warm-up: no rungs


def brute_force_layers(points: list[list[float]]) -> list[int]:
    """Peel fronts with O(n^2) dominance written here (minimize all)."""
    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and a != b

    rank, left, layer = [-1] * len(points), set(range(len(points))), 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            rank[i] = layer
        left -= front
        layer += 1
    return rank


@pytest.mark.parametrize("seed", range(4))
def test_layers_match_brute_force_peeling(seed: int) -> None:
    import numpy as np

    points = np.random.default_rng(seed).integers(0, 5, size=(20, 2)).astype(float).tolist()
    assert layers(points, MIN2) == brute_force_layers(points)


def test_keep_is_the_ceiling_of_peers_over_eta() -> None:
    rule = PrunerConfig(name="pareto", warmup_epochs=1, min_trials=0, reduction_factor=3)
    assert decide([1.0, 1.0], [], MIN2, rule).keep == 1
    assert decide([1.0, 1.0], [[2.0, 2.0]] * 2, MIN2, rule).keep == 1  # 3 points / 3
    assert decide([1.0, 1.0], [[2.0, 2.0]] * 3, MIN2, rule).keep == 2  # 4 points: ceil(4 / 3)
    assert decide([1.0, 1.0], [[2.0, 2.0]] * 3, MIN2, rule).peers == 4


def test_stop_exactly_when_better_reaches_keep() -> None:
    rule = PrunerConfig(name="pareto", warmup_epochs=1, min_trials=0, reduction_factor=2)
    # layer 1: two points ahead of it, 4 points in all -> keep 2: better == keep stops
    at_quota = decide([5.0, 5.0], [[1.0, 4.0], [4.0, 1.0], [9.0, 9.0]], MIN2, rule)
    assert (at_quota.rank, at_quota.better, at_quota.keep, at_quota.stop) == (1, 2, 2, True)
    # one point ahead, 4 points in all -> keep 2: better == keep - 1 goes on
    below = decide([5.0, 5.0], [[1.0, 4.0], [9.0, 9.0], [9.0, 8.0]], MIN2, rule)
    assert (below.rank, below.better, below.keep, below.stop) == (1, 1, 2, False)


def test_peers_in_the_same_layer_are_not_better() -> None:
    rule = PrunerConfig(name="pareto", warmup_epochs=1, min_trials=0, reduction_factor=4)
    # layer 1 with two layer-1 neighbours and one layer-0 point: only the layer-0 one is better
    decision = decide([5.0, 5.0], [[1.0, 1.0], [4.0, 6.0], [6.0, 4.0]], MIN2, rule)
    assert (decision.rank, decision.better) == (1, 1)
    assert decision.stop  # keep = ceil(4 / 4) = 1


def test_min_trials_boundary_and_a_dominated_duplicate() -> None:
    rule = PrunerConfig(name="pareto", warmup_epochs=1, min_trials=2, reduction_factor=2)
    assert not decide([9.0, 9.0], [[1.0, 1.0]], MIN2, rule).stop  # 1 peer < min_trials 2: no verdict
    assert decide([9.0, 9.0], [[1.0, 1.0]] * 2, MIN2, rule).stop  # 2 peers: a verdict
    # a duplicate of a front point is on the front too: never stopped
    assert not decide([1.0, 1.0], [[1.0, 1.0]] * 5, MIN2, rule).stop


def test_a_decision_on_the_front_reports_its_counts() -> None:
    decision = decide([1.0, 9.0], [[9.0, 1.0], [9.0, 9.0]], MIN2, RULE)
    assert (decision.stop, decision.rank, decision.better, decision.peers, decision.keep) == (False, 0, 0, 3, 1)
    assert decision.reason(3) == ("dominated at the epoch-3 rung: 0 of 3 trials there lie in better non-dominated "
                                  "layers, and successive halving keeps 1")


def test_rung_points_put_the_validation_loss_first() -> None:
    from vae_automl.early_stopping import rung_directions

    assert rung_directions(["minimize", "maximize"]) == ["minimize", "minimize", "maximize"]
    assert rung_directions([]) == ["minimize"]
