"""``hvi`` recompresses trained bases: the base-model cache trains nothing for such a trial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from vae_automl import samplers
from vae_automl import space as space_mod
from vae_automl.config import SamplerConfig, load_space
from vae_automl.hvi_sampler import HypervolumeSampler
from vae_automl.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
MIN2 = ["minimize", "minimize"]


@pytest.mark.parametrize(
    ("name", "chooses_compression"),
    [
        ("compressor0", True),
        ("compressor0.uniform.bits", True),
        ("compressor12.kmeans.qat_epochs", True),
        ("compressor", False),
        ("compressors", False),
        ("compressor0x", False),
        ("mlp.compressor0", False),
        ("training.epochs", False),
        ("architecture", False),
    ],
)
def test_compression_parameters_are_told_from_the_base(name: str, chooses_compression: bool) -> None:
    assert space_mod.is_compression_param(name) is chooses_compression


def base_of(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in params.items() if not space_mod.is_compression_param(k)))


def bits_matter(params: dict[str, Any]) -> list[float]:
    """quick.yaml's shape: a wider base is better and bigger; fewer bits are smaller and a little worse."""
    width, bits = params["mlp.hidden_width"], params.get("compressor0.uniform.bits", 32)
    elbo = 30.0 - np.log(width) - 0.3 * np.log(params["mlp.latent_dim"]) + 4.0 / bits
    return [float(elbo), float(width * params["mlp.hidden_layers"] * bits)]


def bits_do_nothing(params: dict[str, Any]) -> list[float]:
    """The compression changes neither objective: recompressing a base can add nothing to the front."""
    width = params["mlp.hidden_width"]
    return [float(30.0 - np.log(width) - 0.3 * np.log(params["mlp.latent_dim"])), float(width * params["mlp.hidden_layers"])]


def reused_bases(sampler: optuna.samplers.BaseSampler, objective: Callable[[dict[str, Any]], list[float]]) -> int:
    """Of 40 trials on quick.yaml, how many have the base (every parameter but the compression) of an earlier one."""
    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    seen, reused = set(), 0
    for _ in range(40):
        trial = study.ask()
        params = space_mod.suggest(trial, space)
        reused += base_of(params) in seen
        seen.add(base_of(params))
        study.tell(trial, objective(params))
    return reused


def quick_sampler(seed: int, reuse: bool) -> optuna.samplers.BaseSampler:
    """What a search of quick.yaml gets, in both backends: ``sampler: {recompress: false}`` switches it off."""
    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    sampler = samplers.make_sampler(SamplerConfig(name="auto", seed=seed, recompress=reuse), space)
    assert isinstance(sampler, HypervolumeSampler)
    assert sampler.compression_param is (space_mod.is_compression_param if reuse else None)
    return sampler


def test_where_the_compression_matters_trained_bases_are_recompressed() -> None:
    # the 8 random start-up trials have 8 bases; a mutation steps every parameter, so without recompressions
    # a base comes back only by chance
    with_reuse = [reused_bases(quick_sampler(seed, True), bits_matter) for seed in range(2)]
    without = [reused_bases(quick_sampler(seed, False), bits_matter) for seed in range(2)]
    assert min(with_reuse) >= 8
    assert max(without) <= 3


def test_a_recompression_that_cannot_gain_is_not_preferred() -> None:
    assert max(reused_bases(quick_sampler(seed, True), bits_do_nothing) for seed in range(2)) <= 3


def test_a_real_search_takes_recompressed_bases_from_the_cache(tmp_path: Path) -> None:
    """quick.yaml, really trained (1-2 epochs): the trials that keep an earlier trial's base exactly are the ones
    whose base comes from the cache, after a round trip of the parameters through the study's SQLite storage."""
    from vae_automl.api import search
    from vae_automl.record import TrialRecord

    text = (ROOT / "search_spaces" / "quick.yaml").read_text()
    text = text.replace("epochs: {low: 10, high: 30}", "epochs: {low: 1, high: 2}")
    text = text.replace("pruner: {name: pareto, warmup_epochs: 10, reduction_factor: 3, min_trials: 4, score: compressed}",
                        "pruner: {name: none}")
    assert "high: 2}" in text and "name: none" in text
    (tmp_path / "quick.yaml").write_text(text)
    result = search(tmp_path / "quick.yaml", trials=24, out_dir=tmp_path, show_progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    seen: set[tuple[tuple[str, Any], ...]] = set()
    hits = 0
    for trial in sorted(study.get_trials(), key=lambda t: t.number):
        record = TrialRecord.from_trial(trial)
        assert record is not None and trial.state == optuna.trial.TrialState.COMPLETE
        assert record.base.cache_hit == (base_of(trial.params) in seen)
        hits += record.base.cache_hit
        seen.add(base_of(trial.params))
    assert hits >= 1, hits


def test_a_space_without_compressors_has_nothing_to_recompress() -> None:
    import dataclasses

    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    assert samplers.recompresses(SamplerConfig(), space)
    bare = dataclasses.replace(space, compressors=())
    assert not samplers.recompresses(SamplerConfig(), bare)
    sampler = samplers.make_sampler(SamplerConfig(name="hvi", seed=0), bare)
    assert isinstance(sampler, HypervolumeSampler) and sampler.compression_param is None


@pytest.mark.parametrize(
    ("share", "stopped_only", "reused"),
    [(0.85, False, True), (0.8, False, True), (0.75, False, False), (0.85, True, False)],
)
def test_a_recompression_is_run_when_at_least_0_8_of_the_best(
    monkeypatch: pytest.MonkeyPatch, share: float, stopped_only: bool, reused: bool
) -> None:
    """Two candidates: a new base with acquisition 1, and another compression of base x = 0.5 with ``share`` of it.
    The recompression runs at 0.8 or more, and only where a completed trial trained that base (a stopped one did not)."""
    from vae_automl import hvi_sampler

    def draw(trial: Any) -> None:
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("compressor0", ["a", "b", "c"])

    sampler = HypervolumeSampler(draw, seed=0, n_startup_trials=0, compression_param=space_mod.is_compression_param)
    study = optuna.create_study(directions=MIN2, sampler=sampler)
    for x, state in ((0.1, "complete"), (0.5, "pruned" if stopped_only else "complete")):
        study.enqueue_trial({"x": x, "compressor0": "a"})
        trial = study.ask()
        draw(trial)
        if state == "complete":
            study.tell(trial, [x, 1 - x])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    new_base, recompression = {"x": 0.9, "compressor0": "a"}, {"x": 0.5, "compressor0": "b"}
    monkeypatch.setattr(HypervolumeSampler, "_candidates", lambda self, parents, top, trained=(): [new_base, recompression])
    monkeypatch.setattr(hvi_sampler, "hypervolume_improvement_2d", lambda points, front, reference: np.array([1.0, share]))
    trial = study.ask()
    draw(trial)
    assert trial.params == (recompression if reused else new_base)


def test_a_value_the_space_no_longer_holds_is_not_kept() -> None:
    """A resumed study may narrow a range: a recompression of a base trained outside it draws that value afresh
    (so it is no recompression, and is not preferred as one)."""
    space = load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())
    sampler = samplers.make_sampler(SamplerConfig(name="auto", seed=0), space)
    assert isinstance(sampler, HypervolumeSampler)
    parent = {"mlp.hidden_layers": 1, "mlp.hidden_width": 64, "mlp.latent_dim": 4, "mlp.activation": "relu",
              "training.epochs": 30, "training.lr": 1.0e-3, "compressor0": "none"}
    kept = [sampler._one(None, parent, keep_base=True) for _ in range(20)]
    assert all(base_of(k) == base_of(parent) for k in kept)
    outside = {**parent, "training.lr": 0.5, "mlp.hidden_width": 1000}  # above both ranges' tops
    moved = [sampler._one(None, outside, keep_base=True) for _ in range(20)]
    for m in moved:
        assert m["mlp.latent_dim"] == 4 and m["mlp.activation"] == "relu"  # still held
        assert 1.0e-3 <= m["training.lr"] <= 1.0e-2 and 16 <= m["mlp.hidden_width"] <= 256


def test_a_base_recompressed_twice_votes_once_on_longer_training() -> None:
    """A trial that took its base from the cache carries that base's validation curve: one vote per base, so two
    recompressions of an overfitting base do not outvote a base whose curve still falls."""
    from vae_automl.hvi_sampler import _longer_training_pays
    from vae_automl.record import CURVE_ATTR, RECORD_ATTR

    def done(curve: list[float], cached: bool = False) -> optuna.trial.FrozenTrial:
        record = {"base": {"cache_hit": cached}}
        return optuna.trial.create_trial(values=[1.0, 1.0], user_attrs={CURVE_ATTR: curve, RECORD_ATTR: record})

    falling, rising = [3.0, 2.0, 1.0], [3.0, 1.0, 2.0]
    assert _longer_training_pays([done(falling), done(rising), done(list(rising), cached=True)])  # 1 of 2 bases
    # two bases trained here with equal curves both vote; so does a cached base no trial here trained
    assert not _longer_training_pays([done(falling), done(rising), done(list(rising))])
    assert not _longer_training_pays([done(falling), done(rising), done([3.0, 1.0, 2.5], cached=True)])
