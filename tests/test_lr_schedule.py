"""training.lr_schedule: the rate of each step (against PyTorch's own scheduler), the trainer applying it, the
captured step reading it, and the studies and caches made before it staying valid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_train import digits, small_model
from vae_automl.config import load_space_text
from vae_automl.fingerprint import fingerprint
from vae_automl.train import TrainConfig, scheduled_lr, train
from vae_automl.trial import base_cache_key

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA device")


def torch_cosine_lrs(lr: float, steps: int) -> list[float]:
    """The rate of each of ``steps`` steps under PyTorch's CosineAnnealingLR (T_max = steps, eta_min = 0)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_starts_at_lr_halves_midway_and_ends_near_zero() -> None:
    steps = 100
    assert scheduled_lr("cosine", 0.01, 0, steps) == pytest.approx(0.01)
    assert scheduled_lr("cosine", 0.01, 50, steps) == pytest.approx(0.005)
    # the last step: 0.01 x (1 + cos(0.99 pi)) / 2 = 0.01 x (1 - 0.9995066) / 2
    assert scheduled_lr("cosine", 0.01, 99, steps) == pytest.approx(2.4672e-6, rel=1e-4)
    ours = [scheduled_lr("cosine", 0.01, step, steps) for step in range(steps)]
    assert ours == pytest.approx(torch_cosine_lrs(0.01, steps), rel=1e-9, abs=1e-15)


def test_constant_keeps_lr_and_an_unknown_schedule_is_refused() -> None:
    assert [scheduled_lr("constant", 3e-3, s, 10) for s in (0, 5, 9)] == [3e-3, 3e-3, 3e-3]
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; known: constant, cosine"):
        scheduled_lr("linear", 1e-3, 0, 10)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def record_adam_rates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A list that every later Adam step appends its first group's learning rate to, as the step sees it."""
    seen: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        seen.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    return seen


def rates_of_each_step(monkeypatch: pytest.MonkeyPatch, config: TrainConfig, lr: float | None = None) -> list[float]:
    seen = record_adam_rates(monkeypatch)
    train(small_model(), digits(), config, lr=lr)
    return seen


def test_the_trainer_sets_the_scheduled_rate_before_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    steps_per_epoch = len(digits().train) // 64
    seen = rates_of_each_step(monkeypatch, TrainConfig(epochs=2, batch_size=64, lr=4e-3, lr_schedule="cosine"))
    steps = 2 * steps_per_epoch
    assert len(seen) == steps
    assert seen == pytest.approx(torch_cosine_lrs(4e-3, steps), rel=1e-6)
    assert seen[0] == pytest.approx(4e-3) and seen[steps // 2] == pytest.approx(2e-3) and seen[-1] < 1e-5


def test_a_fine_tuning_rate_is_what_the_schedule_decays(monkeypatch: pytest.MonkeyPatch) -> None:
    # lr= (a compressor's qat_lr, say) overrides config.lr as the schedule's start
    seen = rates_of_each_step(monkeypatch, TrainConfig(epochs=1, batch_size=64, lr=4e-3, lr_schedule="cosine"), lr=0.02)
    assert seen == pytest.approx(torch_cosine_lrs(0.02, len(seen)), rel=1e-6)


def test_constant_is_the_default_and_never_moves_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainConfig().lr_schedule == "constant"
    seen = rates_of_each_step(monkeypatch, TrainConfig(epochs=1, batch_size=64, lr=4e-3))
    assert set(seen) == {4e-3}


SPACE = """
dataset: digits
architecture: {mlp: {hidden_layers: 1}}
objectives: [size_bytes, test_elbo_nats]
"""


def test_studies_and_base_caches_made_before_the_schedule_stay_valid() -> None:
    plain = load_space_text(SPACE, "s.yaml")
    constant = load_space_text(SPACE + "training: {lr_schedule: constant}\n", "s.yaml")
    cosine = load_space_text(SPACE + "training: {lr_schedule: cosine}\n", "s.yaml")
    # a study recorded before lr_schedule existed has no such key: a constant-rate run continues it
    assert "lr_schedule" not in fingerprint(plain)["training"]
    assert fingerprint(constant) == fingerprint(plain) != fingerprint(cosine)
    assert fingerprint(cosine)["training"]["lr_schedule"] == {"kind": "const", "value": "cosine"}
    data = digits()
    training = {"epochs": 3, "batch_size": 64, "lr": 1e-3, "beta": 1.0, "weight_decay": 0.0, "patience": None}
    before = base_cache_key({"m": 1}, training, data, 0)
    assert base_cache_key({"m": 1}, {**training, "lr_schedule": "constant"}, data, 0) == before
    assert base_cache_key({"m": 1}, {**training, "lr_schedule": "cosine"}, data, 0) != before


@needs_cuda
def test_a_captured_step_follows_the_schedule() -> None:
    """A float rate would be baked into the graph at capture: the run would equal a constant-rate one."""
    data = digits("cuda")
    states = {}
    for name, schedule, capture in (("eager", "cosine", "off"), ("captured", "cosine", "on"), ("constant", "constant", "on")):
        model = small_model().cuda()
        result = train(model, data, TrainConfig(epochs=3, batch_size=64, lr=3e-3, lr_schedule=schedule, capture=capture))
        assert result.captured == (capture == "on")
        states[name] = model.state_dict()
    for key, value in states["captured"].items():
        assert torch.allclose(value, states["eager"][key], atol=1e-3, rtol=1e-3), key
    assert not all(torch.equal(v, states["constant"][k]) for k, v in states["captured"].items())
    assert math.isfinite(float(states["captured"]["mu.weight"].sum()))


def test_for_fine_tuning_takes_the_fine_tuning_schedule() -> None:
    config = TrainConfig(epochs=20, lr_schedule="constant", finetune_lr_schedule="cosine", patience=3, lr=2e-3)
    tuning = config.for_fine_tuning(4)
    assert (tuning.epochs, tuning.patience, tuning.lr_schedule, tuning.lr) == (4, None, "cosine", 2e-3)
    assert config.for_fine_tuning(4).finetune_lr_schedule == "cosine"
    assert TrainConfig(lr_schedule="cosine").for_fine_tuning(1).lr_schedule == "constant"


TRIAL_SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 2, batch_size: 64, lr: 4.0e-3, finetune_lr_schedule: cosine}
compressors:
  - {name: magnitude_prune, params: {sparsity: 0.5, finetune_epochs: 2}}
objectives: [test_elbo_nats, size_bytes]
"""


def test_a_trial_trains_its_base_at_a_constant_rate_and_fine_tunes_on_the_cosine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.space import resolve
    from vae_automl.trial import prepare, run_trial

    seen = record_adam_rates(monkeypatch)
    space = load_space_text(TRIAL_SPACE, "t.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    run_trial(env, resolve(space, {}), 0)
    steps = 2 * TrainConfig(batch_size=64).steps_per_epoch(len(env.data.train))
    assert len(seen) == 2 * steps  # the base's two epochs, then the fine-tuning's two
    assert seen[:steps] == [4e-3] * steps
    assert seen[steps:] == pytest.approx(torch_cosine_lrs(4e-3, steps), rel=1e-6)
