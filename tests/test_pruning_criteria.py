"""magnitude_prune's activation-aware criteria (wanda, kfac), its magnitude_layers scope and bias compensation,
each against an oracle computed here with numpy or torch's own layers."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from vae_automl.builtin.pruning import MagnitudePruner
from vae_automl.builtin.pruning_impl import compensate_biases, per_output_weight, per_weight, prunable_weights
from vae_automl.data import DataSplits
from vae_automl.testing import make_context, tiny_model
from vae_automl.testing.compressors import tiny_data
from vae_automl.vae import VAE

DEAD = (0, 7, 20, 33)
"""Pixels of the 8x8 digits set to 0 in every training image here."""
IMAGES = 100
"""Fewer than a saliency batch (128): every calibration batch is then all of these images."""


def _data() -> DataSplits:
    data = tiny_data()
    train = data.train[:IMAGES].clone()
    train.view(IMAGES, -1)[:, list(DEAD)] = 0.0
    return dataclasses.replace(data, train=train)


def _prune(model: VAE, data: DataSplits, **params: Any) -> VAE:
    compressor = MagnitudePruner()
    values = compressor.resolve_params({"finetune_epochs": 0, "batches": 2, **params})
    return compressor.apply(model, values, make_context(data, teacher=model))


def _first_layer(model: VAE) -> nn.Linear:
    layer = model.encoder[0]
    assert isinstance(layer, nn.Linear) and layer.in_features == 64
    return layer


def _last_layer(model: VAE) -> nn.Linear:
    layer = model.decoder[-1]
    assert isinstance(layer, nn.Linear) and layer.out_features == 64
    return layer


def test_wanda_prunes_the_weights_of_an_always_zero_input_first_and_ranks_as_its_formula() -> None:
    data = _data()
    model = tiny_model("mlp")
    w = _first_layer(model).weight
    with torch.no_grad():
        w[:, list(DEAD)] = 10 * w.abs().max()  # the largest weights: magnitude pruning keeps them all
    magnitude = _prune(model, data, sparsity=0.5, scope="layer")
    wanda = _prune(model, data, sparsity=0.5, scope="layer", criterion="wanda")
    assert torch.all(_first_layer(magnitude).weight[:, list(DEAD)] != 0)
    assert torch.all(_first_layer(wanda).weight[:, list(DEAD)] == 0)
    # Oracle: |w_ij| * ||x_j|| over the calibration images, the lowest half dropped.
    x = data.train.reshape(IMAGES, -1).double().numpy()
    scores = np.abs(w.detach().double().numpy()) * np.sqrt((x**2).sum(axis=0))[None, :]
    k = int(round(0.5 * scores.size))
    threshold = np.sort(scores.ravel())[k - 1]
    expected_kept = scores > threshold
    kept = (_first_layer(wanda).weight != 0).numpy()
    near = np.isclose(scores, threshold, rtol=1e-5)  # float32 vs float64 may order the boundary's near-ties apart
    assert np.array_equal(kept[~near], expected_kept[~near])
    assert int(kept.sum()) == scores.size - k


def test_kfac_prunes_the_weights_into_an_output_the_loss_ignores_first() -> None:
    data = _data()
    model = tiny_model("mlp")
    last = _last_layer(model)
    pixel = DEAD[1]
    with torch.no_grad():
        # Always 0 in the data and saturated (logit <= -50 on ReLU inputs): the loss's gradient there is ~0,
        # while its weights are the layer's largest.
        last.bias[pixel] = -50.0
        last.weight[pixel] = -10 * last.weight.abs().max()
    wanda = _prune(model, data, sparsity=0.3, scope="layer", criterion="wanda")
    kfac = _prune(model, data, sparsity=0.3, scope="layer", criterion="kfac")
    assert torch.all(_last_layer(wanda).weight[pixel] != 0)
    assert torch.all(_last_layer(kfac).weight[pixel] == 0)
    assert float((_last_layer(kfac).weight == 0).float().mean()) == pytest.approx(0.3, abs=1 / 2048)


def test_magnitude_layers_scope_keeps_global_magnitude_counts_per_layer() -> None:
    data = _data()
    model = tiny_model("mlp")
    sparsity = 0.6
    magnitudes = {n: w.detach().abs().double().numpy() for n, w in prunable_weights(model).items()}
    everything = np.sort(np.concatenate([m.ravel() for m in magnitudes.values()]))
    threshold = everything[int(round(sparsity * everything.size)) - 1]
    pruned = _prune(model, data, sparsity=sparsity, scope="magnitude_layers", criterion="wanda")
    plain = _prune(model, data, sparsity=sparsity, scope="global", criterion="magnitude")
    same = _prune(model, data, sparsity=sparsity, scope="magnitude_layers", criterion="magnitude")
    for name, w in prunable_weights(pruned).items():
        assert int((w != 0).sum()) == int((magnitudes[name] > threshold).sum()), name
        assert torch.equal(prunable_weights(same)[name] != 0, prunable_weights(plain)[name] != 0), name
    first = next(iter(prunable_weights(pruned)))
    assert torch.all(prunable_weights(pruned)[first].reshape(-1, 64)[:, list(DEAD)] == 0)


def test_bias_compensation_keeps_the_first_layers_mean_output() -> None:
    data = _data()
    model = tiny_model("mlp")
    x = data.train.reshape(IMAGES, -1)
    before = _first_layer(model)(x).mean(dim=0).detach()
    compensated = _prune(model, data, sparsity=0.7, scope="layer", bias_compensation=True)
    plain = _prune(model, data, sparsity=0.7, scope="layer")
    torch.testing.assert_close(_first_layer(compensated)(x).mean(dim=0).detach(), before, atol=1e-4, rtol=1e-4)
    assert float((_first_layer(plain)(x).mean(dim=0).detach() - before).abs().max()) > 1e-2
    assert torch.equal(_first_layer(compensated).weight, _first_layer(plain).weight)  # the same mask


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(4, 6, 3, groups=2),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ConvTranspose2d(4, 6, 3, groups=2),
        nn.ConvTranspose2d(4, 6, 4, stride=2, groups=2),
    ],
)
def test_grouped_conv_compensation_keeps_the_layers_mean_output_on_a_constant_input(layer: nn.Module) -> None:
    torch.manual_seed(0)
    means = torch.rand(4)
    x = means[None, :, None, None].expand(1, 4, 17, 17)
    # Interior positions only (no padding or border taps), a whole period of a stride-2 transposed conv.
    before = layer(x)[0, :, 4:8, 4:8].detach().mean(dim=(1, 2))
    mask = torch.rand_like(layer.weight) > 0.5
    pruned = copy.deepcopy(layer)
    compensate_biases(pruned, {"weight": mask}, {"weight": means})
    with torch.no_grad():
        pruned.weight.mul_(mask)
    torch.testing.assert_close(pruned(x)[0, :, 4:8, 4:8].detach().mean(dim=(1, 2)), before, atol=1e-5, rtol=1e-5)


def test_grouped_conv_broadcasts_per_input_and_per_output_channel() -> None:
    conv, transposed = nn.Conv2d(4, 6, 3, groups=2), nn.ConvTranspose2d(4, 6, 3, groups=2)
    inputs, outputs = torch.arange(4.0), torch.arange(6.0)
    # Conv2d weight (out 6, in/groups 2, 3, 3): output o reads input channels (o // 3) * 2 + j
    for o in range(6):
        for j in range(2):
            assert torch.all(per_weight(conv, inputs)[o, j] == (o // 3) * 2 + j)
            assert torch.all(per_output_weight(conv, outputs)[o, j] == o)
    # ConvTranspose2d weight (in 4, out/groups 3, 3, 3): input c feeds outputs (c // 2) * 3 + o
    for c in range(4):
        for o in range(3):
            assert torch.all(per_weight(transposed, inputs)[c, o] == c)
            assert torch.all(per_output_weight(transposed, outputs)[c, o] == (c // 2) * 3 + o)


def test_a_layer_that_sees_no_input_is_refused_by_name() -> None:
    model = tiny_model("mlp")
    model.unused = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"unused\.weight.*received no input"):
        _prune(model, _data(), sparsity=0.5, criterion="wanda")


@pytest.mark.parametrize(
    "option", [{"criterion": "wanda"}, {"criterion": "kfac"}, {"bias_compensation": True}, {"scope": "magnitude_layers"}]
)
def test_a_magnitude_ramp_refuses_the_options_that_act_once(option: dict[str, Any]) -> None:
    compressor = MagnitudePruner()
    compressor.resolve_params({"ramp_epochs": 0, "finetune_epochs": 2, **option})  # at once: allowed
    with pytest.raises(ValueError, match="`ramp_epochs` > 0 ramps by magnitude"):
        compressor.resolve_params({"ramp_epochs": 1, "finetune_epochs": 2, **option})


def test_wanda_and_kfac_scores_ignore_a_per_layer_constant_in_the_norms() -> None:
    # Each layer's norms are divided by their RMS (wanda_weight_scores' docstring), so that global scope compares
    # layers on their weights' scale: norms constant within each layer, however different across layers, give |w|.
    from vae_automl.builtin.pruning_impl import InputStatistics, kfac_weight_scores, prunable_layers, wanda_weight_scores

    model = tiny_model("mlp")
    layers = prunable_layers(model)
    assert layers and all(isinstance(m, nn.Linear) for m in layers.values())
    linear = {name: m for name, m in layers.items() if isinstance(m, nn.Linear)}
    stats = InputStatistics(
        norms={name: torch.full((m.in_features,), 0.5 + 10.0 * i) for i, (name, m) in enumerate(linear.items())},
        means={name: torch.zeros(m.in_features) for name, m in linear.items()},
        grad_norms={name: torch.full((m.out_features,), 1e-3 * (i + 1)) for i, (name, m) in enumerate(linear.items())},
    )
    for scores in (wanda_weight_scores(model, stats), kfac_weight_scores(model, stats)):
        assert set(scores) == set(linear)
        for name, m in linear.items():
            torch.testing.assert_close(scores[name], m.weight.detach().abs())
