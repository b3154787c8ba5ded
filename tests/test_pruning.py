"""Pruning compressors: sparsity reached and kept, structured shrinking, the contract, base-model reuse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_automl import packing
from vae_automl.builtin.pruning import L1Pruner, MagnitudePruner, StructuredPruner, TaylorPruner
from vae_automl.builtin.pruning_impl import channel_groups, prunable_weights
from vae_automl.components import Compressor
from vae_automl.config import load_space_text
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl.testing import CompressorContract, make_context, tiny_model
from vae_automl.testing.compressors import tiny_data
from vae_automl.trial import prepare, run_trial
from vae_automl.vae import VAE


def _zero_fraction(model: VAE) -> float:
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _apply(compressor: Compressor, model: VAE, **params: Any) -> VAE:
    values = {p.name: params.get(p.name, p.default) for p in compressor.params}
    return compressor.apply(model, values, make_context(tiny_data(), teacher=model))


class TestMagnitudeContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return MagnitudePruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"sparsity": 0.6, "scope": "layer", "finetune_epochs": 1}


class TestKfacContract(CompressorContract):
    """The activation-aware path (calibration hooks, output gradients, bias compensation) on every tiny model,
    conv and transposed-conv layers included."""

    @pytest.fixture
    def compressor(self) -> Compressor:
        return MagnitudePruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {
            "sparsity": 0.6,
            "scope": "magnitude_layers",
            "criterion": "kfac",
            "bias_compensation": True,
            "batches": 2,
            "finetune_epochs": 1,
        }


@pytest.mark.slow
class TestTaylorContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return TaylorPruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"sparsity": 0.5, "batches": 2, "finetune_epochs": 0}


@pytest.mark.slow
class TestL1Contract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return L1Pruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"sparsity": 0.5, "l1_epochs": 1, "finetune_epochs": 0}


class TestStructuredContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return StructuredPruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"ratio": 0.5, "criterion": "taylor", "batches": 2, "finetune_epochs": 1}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_reaches_sparsity_and_mask_survives_fine_tuning(scope: str) -> None:
    model = tiny_model("mlp")
    out = _apply(MagnitudePruner(), model, sparsity=0.7, scope=scope, finetune_epochs=0)
    tuned = _apply(MagnitudePruner(), model, sparsity=0.7, scope=scope, finetune_epochs=2)
    for pruned in (out, tuned):
        assert _zero_fraction(pruned) == pytest.approx(0.7, abs=1e-3)
    if scope == "layer":
        weights = prunable_weights(tuned)
        assert weights, "no prunable weight: the loop below would check nothing"
        for name, w in weights.items():
            assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=1.0 / w.numel() + 1e-6), name
    # Fine-tuning changed the surviving weights, but every pruned position stayed zero.
    for name, w in prunable_weights(out).items():
        tuned_w = prunable_weights(tuned)[name]
        assert torch.all(tuned_w[w == 0] == 0), name
        assert not torch.equal(tuned_w, w)
    assert all(tuned.encodings[name]["sparse"] is True for name in prunable_weights(tuned))


def test_sparse_encoding_shrinks_size_bytes() -> None:
    model = tiny_model("mlp")
    pruned = _apply(MagnitudePruner(), model, sparsity=0.8, finetune_epochs=0)
    dense = copy.deepcopy(pruned)
    dense.encodings = {}
    assert packing.size_bytes(pruned) < 0.5 * packing.size_bytes(dense)
    assert packing.size_bytes(pruned) < packing.size_bytes(model)


def test_taylor_uses_gradients_not_magnitude() -> None:
    model = tiny_model("mlp")
    taylor = _apply(TaylorPruner(), model, sparsity=0.5, scope="layer", finetune_epochs=0, batches=2)
    magnitude = _apply(MagnitudePruner(), model, sparsity=0.5, scope="layer", finetune_epochs=0)
    assert _zero_fraction(taylor) == pytest.approx(0.5, abs=1e-3)
    masks_t = {n: w == 0 for n, w in prunable_weights(taylor).items()}
    masks_m = {n: w == 0 for n, w in prunable_weights(magnitude).items()}
    assert any(not torch.equal(masks_t[n], masks_m[n]) for n in masks_t)


def test_l1_phase_drives_weights_towards_zero() -> None:
    model = tiny_model("mlp")

    def l1_norm(strength: float) -> float:
        out = _apply(L1Pruner(), model, sparsity=0.0, l1_strength=strength, l1_epochs=2, finetune_epochs=0)
        return sum(float(w.detach().abs().sum()) for w in prunable_weights(out).values())

    # Same epochs of training; only the penalty differs.
    assert l1_norm(1e-1) < 0.9 * l1_norm(1e-8)
    pruned = _apply(L1Pruner(), model, sparsity=0.5, l1_strength=1e-3, l1_epochs=1, finetune_epochs=1)
    assert _zero_fraction(pruned) == pytest.approx(0.5, abs=1e-3)


def _kill_units(model: VAE, fraction: float) -> VAE:
    """Zero the incoming weights and bias of the first ``fraction`` of units in every group (dead ReLUs)."""
    model = copy.deepcopy(model)
    groups = channel_groups(model)
    with torch.no_grad():
        for g in groups:
            dead = torch.arange(int(g.size * fraction))
            for name, dim, block in g.slices[:2]:  # producer weight and bias
                tensor = model.get_parameter(name)
                idx = (dead[:, None] * block + torch.arange(block)[None, :]).flatten()
                tensor.index_fill_(dim, idx, 0.0)
    return model


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_structured_removes_dead_units_exactly(architecture: str) -> None:
    model = _kill_units(tiny_model(architecture), 0.5)
    out = _apply(StructuredPruner(), model, ratio=0.5, finetune_epochs=0)
    keys = ("encoder_widths", "decoder_widths") if architecture == "mlp" else ("encoder_channels", "decoder_channels")
    for key in keys:
        assert out.config[key] == [w - int(w * 0.5) for w in model.config[key]]
    n_in = sum(p.numel() for p in model.parameters())
    n_out = sum(p.numel() for p in out.parameters())
    assert n_out < 0.7 * n_in
    assert packing.size_bytes(out) < 0.7 * packing.size_bytes(model)
    # The removed units output zero, so the shrunk model computes the same function.
    x = tiny_data().test[:16]
    with torch.no_grad():
        for a, b in zip(model.encode(x), out.encode(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(model.encode(x)[0]), out.decode(out.encode(x)[0]), rtol=1e-5, atol=1e-5)
    rebuilt = get_registry().build_model(out.config)
    rebuilt.load_state_dict(out.state_dict(), strict=True)
    assert packing.deserialize_model(packing.serialize_model(out)).config == out.config


def test_structured_two_hidden_layers_gaussian() -> None:
    registry = get_registry()
    arch = registry.architectures.get("mlp")
    config = arch.config_from_params({"hidden_layers": 2, "hidden_width": 24, "width_decay": 0.5, "latent_dim": 3,
                                      "activation": "tanh", "likelihood": "gaussian"}, tiny_data().input_shape)
    torch.manual_seed(0)
    model = registry.build_model(config)
    out = _apply(StructuredPruner(), model, ratio=0.75, criterion="taylor", batches=2, finetune_epochs=1)
    assert out.config["encoder_widths"] == [6, 3] and out.config["decoder_widths"] == [3, 6]
    assert out.get_parameter("encoder.0.weight").shape == (6, 64)
    assert out.get_parameter("log_sigma").shape == model.get_parameter("log_sigma").shape


def test_bad_params_name_the_parameter() -> None:
    model = tiny_model("mlp")
    with pytest.raises(ValueError, match="sparsity"):
        _apply(MagnitudePruner(), model, sparsity=1.5)
    with pytest.raises(ValueError, match="criterion"):
        _apply(StructuredPruner(), model, criterion="random")


PIPELINE_SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 2, batch_size: 64}
compressors:
  - choices:
      - {name: magnitude_prune, params: {sparsity: {low: 0.1, high: 0.9}, finetune_epochs: 1}}
      - {name: structured_prune, params: {ratio: 0.5, finetune_epochs: 1}}
objectives: [test_elbo_nats, size_bytes]
record: [params]
"""


def test_trials_differing_only_in_pruning_train_the_base_once(tmp_path: Path) -> None:
    space = load_space_text(PIPELINE_SPACE, "prune.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    light = run_trial(env, resolve(space, {"compressor0": "magnitude_prune", "compressor0.magnitude_prune.sparsity": 0.2}), 0)
    heavy = run_trial(env, resolve(space, {"compressor0": "magnitude_prune", "compressor0.magnitude_prune.sparsity": 0.8}), 1)
    shrunk = run_trial(env, resolve(space, {"compressor0": "structured_prune"}), 2)
    assert env.stats == {"base_trained": 1, "base_reused": 2}
    assert light["base"]["cache_key"] == heavy["base"]["cache_key"] == shrunk["base"]["cache_key"]
    assert heavy["metrics"]["size_bytes"] < light["metrics"]["size_bytes"]
    assert heavy["metrics"]["params"] < light["metrics"]["params"]
    assert shrunk["model_config"]["encoder_widths"] == [8]
