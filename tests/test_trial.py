from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vae_automl.config import load_space_text
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl import trial as trial_mod
from vae_automl.trial import prepare, run_trial

SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 2, batch_size: 64, lr: {low: 1.0e-3, high: 1.0e-2}}
objectives: [test_elbo_nats, size_bytes]
record: [recon_error, params, theoretical_bits]
"""


def test_base_cache_reused_for_same_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = load_space_text(SPACE, "t.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    measured: list[tuple[str, ...]] = []
    real_measure = trial_mod.measure

    def counting_measure(env_: Any, model: Any, names: tuple[str, ...], seed: int) -> Any:
        measured.append(names)
        return real_measure(env_, model, names, seed)

    monkeypatch.setattr(trial_mod, "measure", counting_measure)
    first = run_trial(env, resolve(space, {"training.lr": 0.005}), 0)
    again = run_trial(env, resolve(space, {"training.lr": 0.005}), 1)
    other = run_trial(env, resolve(space, {"training.lr": 0.002}), 2)
    assert env.stats == {"base_trained": 2, "base_reused": 1}
    assert not first["base"]["cache_hit"] and again["base"]["cache_hit"] and not other["base"]["cache_hit"]
    assert first["base"]["cache_key"] == again["base"]["cache_key"] != other["base"]["cache_key"]
    assert first["metrics"]["test_elbo_nats"] == pytest.approx(again["metrics"]["test_elbo_nats"])
    assert first["metrics"]["theoretical_bits"] == 32 * first["metrics"]["params"]
    assert Path(first["artifact"]).stat().st_size == first["metrics"]["size_bytes"]
    # each trial measures its model; each base's uncompressed baseline is measured once, the reused one not again
    assert len(measured) == 3 + 2
    assert again["baseline"] == first["baseline"] and set(first["baseline"]) == {"test_elbo_nats", "size_bytes"}


def test_a_missing_teacher_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    from vae_automl.errors import VaeAutomlError

    space = load_space_text(SPACE + f"teacher: {tmp_path / 'nope.safetensors'}\n", "t.yaml")
    with pytest.raises(VaeAutomlError, match=f"t.yaml: teacher: no such checkpoint {tmp_path / 'nope.safetensors'}"):
        prepare(space, tmp_path, get_registry(), get_plugin_manager())


def test_a_teacher_checkpoint_is_loaded_from_its_file(tmp_path: Path) -> None:
    import torch

    from test_golden_format import GOLDEN, dense_model

    space = load_space_text(SPACE + f"teacher: {GOLDEN / 'mlp_float32.safetensors'}\n", "t.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    assert env.teacher is not None
    for name, tensor in dense_model().state_dict().items():
        assert torch.equal(env.teacher.state_dict()[name], tensor), name
