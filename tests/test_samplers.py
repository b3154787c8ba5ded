"""The sampler ``auto`` stands for, and that worker and Ray paths build the same sampler and stopping rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl import samplers
from vae_automl.config import PrunerConfig, SamplerConfig, load_space
from vae_automl.hvi_sampler import HypervolumeSampler
from vae_automl.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]


def quick() -> Any:
    return load_space(ROOT / "search_spaces" / "quick.yaml", get_registry())


def test_auto_is_hvi_on_two_objectives_and_tpe_otherwise() -> None:
    space = quick()
    flat = dataclasses.replace(space, compressors=())
    for s in (space, flat):
        for trials in (10, 100, 10_000):
            assert samplers.choose(s, trials) == "hvi"
    three = dataclasses.replace(space, objectives=("test_elbo_nats", "size_bytes", "latency_ms"))
    assert samplers.choose(three, 100) == "tpe"
    assert samplers.choose(None, 100) == "tpe"  # hvi draws from the space; without one, TPE
    assert isinstance(samplers.make_sampler(SamplerConfig(name="auto", seed=0), three), optuna.samplers.TPESampler)


def test_a_space_without_a_sampler_key_gets_auto(tmp_path: Path) -> None:
    text = (ROOT / "search_spaces" / "quick.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("sampler:")))
    assert load_space(path, get_registry()).sampler.name == "auto"


def test_auto_is_the_hypervolume_sampler_and_tpe_keeps_the_constant_liar() -> None:
    assert isinstance(samplers.make_sampler(SamplerConfig(name="auto", seed=1), quick()), HypervolumeSampler)
    sampler = samplers.make_sampler(SamplerConfig(name="tpe", seed=1), quick())
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar and not sampler._multivariate


@pytest.mark.parametrize(("name", "kind"), [("random", optuna.samplers.RandomSampler),
                                            ("hvi", HypervolumeSampler),
                                            ("nsga2", optuna.samplers.NSGAIISampler),
                                            ("tpe", optuna.samplers.TPESampler),
                                            ("gp", optuna.samplers.GPSampler)])
def test_a_named_sampler_is_used_as_named(name: str, kind: type) -> None:
    assert isinstance(samplers.make_sampler(SamplerConfig(name=name, seed=0), quick()), kind)


def test_tpe_samples_the_conditional_space_with_concurrent_trials() -> None:
    from vae_automl import space as space_mod

    space = quick()
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=samplers.make_sampler(SamplerConfig(name="tpe", seed=0), space))
    for i in range(14):
        trial = study.ask()
        params = space_mod.suggest(trial, space)
        assert ("compressor0.uniform.bits" in params) == (params["compressor0"] == "uniform")
        study.tell(trial, [30.0 - params["mlp.hidden_width"] / 100, params["mlp.hidden_width"] * (i + 1)])
    # two workers asking at once: the running trial is a liar's bad point, so the second differs
    first, second = study.ask(), study.ask()
    assert space_mod.suggest(first, space) != space_mod.suggest(second, space)


def test_worker_and_ray_use_the_same_sampler_and_stopping_rule(tmp_path: Path, monkeypatch: Any) -> None:
    pytest.importorskip("ray.tune")
    from vae_automl.api import search
    from vae_automl.backends import ray as ray_backend
    from vae_automl.early_stopping import FINE_TUNE_RUNG, decide, rung_directions
    from vae_automl.worker import run_worker

    # quick.yaml ships no early stopping (the replay favours none with hvi): the rule a user would write
    rule = PrunerConfig(name="pareto", warmup_epochs=3, min_trials=4)
    space = dataclasses.replace(quick(), trials=3, pruner=rule)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search(space, trials=0, storage=storage, out_dir=tmp_path / "out", show_progress=False)
    worker = run_worker(storage, "quick", trials=0, show_progress=False)
    assert isinstance(worker.study.sampler, HypervolumeSampler)  # auto on two objectives

    captured: dict[str, Any] = {}

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return True

    class Stop(Exception):
        pass

    def fake_tuner(trainable: Any, tune_config: Any, run_config: Any) -> Any:
        captured["sampler"] = tune_config.search_alg._sampler
        captured["scheduler"] = tune_config.scheduler
        raise Stop

    import ray.tune

    monkeypatch.setattr(ray_backend, "_import_ray", lambda: FakeRay)
    monkeypatch.setattr(ray.tune, "Tuner", fake_tuner)
    with pytest.raises(Stop):
        search(space, trials=1, storage=storage, out_dir=tmp_path / "out", backend="ray", show_progress=False)
    sampler, scheduler = captured["sampler"], captured["scheduler"]
    assert type(sampler) is type(worker.study.sampler)
    ours, theirs = sampler.draw.space, worker.study.sampler.draw.space  # both draw candidates from the same space
    assert (ours.architectures, ours.training, ours.compressors) == (theirs.architectures, theirs.training,
                                                                     theirs.compressors)
    # both learn from stopped trials the same way: the score stands for test_elbo_nats, size_bytes is known
    assert sampler.rung_layout == worker.study.sampler.rung_layout == (0, 1)
    assert scheduler.config == space.pruner
    assert scheduler.directions == rung_directions(["minimize"])  # validation loss, then size_bytes
    # the scheduler stops exactly when the Optuna backend's rule does
    points = [[10.0, 900.0], [20.0, 500.0], [30.0, 100.0], [12.0, 950.0], [50.0, 1200.0], [60.0, 1300.0],
              [5.0, 50.0]]

    class Trial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    seen: list[list[float]] = []
    for k, point in enumerate(points):
        verdict = scheduler.on_trial_result(None, Trial(f"t{k}"), {"epoch": 3, "rung": "3", "rung_values": {"3": point}})
        expected = decide(point, seen, scheduler.directions, space.pruner).stop
        assert (verdict == "STOP") == expected
        seen.append(point)
    assert scheduler.on_trial_result(None, Trial("t5b"), {"epoch": 3, "rung": "3",
                                                          "rung_values": {"3": [70.0, 2000.0]}}) == "STOP"
    assert scheduler.on_trial_result(None, Trial("t6b"), {"epoch": 3, "rung": "3",
                                                          "rung_values": {"3": [1.0, 10.0]}}) == "CONTINUE"
    # an epoch report that is no rung is never judged
    assert scheduler.on_trial_result(None, Trial("t7"), {"epoch": 3, "rung_values": {"3": [99.0, 9e9]}}) == "CONTINUE"
    # the before-fine-tuning rung compares with its own peers only, as the Optuna backend's gate does
    ft = [[10.0, 900.0], [20.0, 500.0], [30.0, 100.0], [12.0, 950.0]]
    for k, point in enumerate(ft):
        scheduler.on_trial_result(None, Trial(f"f{k}"), {"epoch": 5, "rung": FINE_TUNE_RUNG,
                                                         "rung_values": {FINE_TUNE_RUNG: point}})
    worse = {"epoch": 5, "rung": FINE_TUNE_RUNG, "rung_values": {FINE_TUNE_RUNG: [65.0, 1250.0]}}
    assert decide([65.0, 1250.0], ft, scheduler.directions, space.pruner).stop
    assert scheduler.on_trial_result(None, Trial("f9"), worse) == "STOP"


def test_a_resumed_seeded_search_does_not_replay_its_start_up_points(tiny_space: Any, tmp_path: Path) -> None:
    from vae_automl.api import search

    space = tiny_space(trials=2)
    first = search(space, out_dir=tmp_path / "out", show_progress=False)
    search(space, trials=2, out_dir=tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 4 and len(set(params)) == 4
