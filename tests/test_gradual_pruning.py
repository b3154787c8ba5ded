"""magnitude_prune's ramp_epochs: Zhu & Gupta's cubic sparsity ramp during fine-tuning, ending at the set sparsity."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from vae_automl.builtin.pruning import MagnitudePruner
from vae_automl.builtin.pruning_impl import RAMP_UPDATES_PER_EPOCH, prunable_weights, ramped_sparsity
from vae_automl.components import Compressor
from vae_automl.testing import CompressorContract, make_context, tiny_model
from vae_automl.testing.compressors import TINY_BATCH_SIZE, tiny_data


class TestGradualMagnitudeContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return MagnitudePruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"sparsity": 0.6, "scope": "global", "finetune_epochs": 1, "ramp_epochs": 1}


def test_the_ramp_is_cubic_from_zero_to_the_final_sparsity() -> None:
    assert ramped_sparsity(0.8, 0, 100) == 0.0
    assert ramped_sparsity(0.8, 25, 100) == pytest.approx(0.8 * (1 - 0.75**3))  # 0.4625: fast at first
    assert ramped_sparsity(0.8, 50, 100) == pytest.approx(0.7)  # 0.8 x (1 - 1/8)
    assert ramped_sparsity(0.8, 100, 100) == 0.8
    assert ramped_sparsity(0.8, 250, 100) == 0.8  # held after the ramp


def zero_fraction(model: Any) -> float:
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_sparsity_rises_along_the_ramp_and_pruned_weights_stay_pruned() -> None:
    data = tiny_data()
    ctx = make_context(data)
    seen: list[float] = []
    zeros: list[dict[str, torch.Tensor]] = []
    fine_tune = ctx.fine_tune

    def recording_fine_tune(model: Any, epochs: int, extra_loss: Any = None, after_step: Any = None, lr: Any = None) -> Any:
        def step(m: Any) -> None:
            after_step(m)
            seen.append(zero_fraction(m))
            zeros.append({n: w == 0 for n, w in prunable_weights(m).items()})

        return fine_tune(model, epochs, extra_loss=extra_loss, after_step=step, lr=lr)

    ctx = dataclasses.replace(ctx, fine_tune=recording_fine_tune)
    values = {"sparsity": 0.8, "scope": "global", "finetune_epochs": 3, "ramp_epochs": 2}
    out = MagnitudePruner().apply(tiny_model("mlp"), values, ctx)
    steps_per_epoch = len(data.train) // TINY_BATCH_SIZE
    ramp = 2 * steps_per_epoch
    assert len(seen) == 3 * steps_per_epoch
    every = max(1, steps_per_epoch // RAMP_UPDATES_PER_EPOCH)
    # the masks are recomputed every `every` steps: at each such step the zeros are the ramp's fraction (and the
    # tiny model's ~1,400 weights round it to within 1e-3)
    for step in range(every, ramp + 1, every):
        assert seen[step - 1] == pytest.approx(ramped_sparsity(0.8, step, ramp), abs=1e-3), step
    assert seen[0] < 0.4 and seen[ramp // 2] > 0.6  # fast at first, slow at the end
    assert seen[ramp - 1 :] == pytest.approx([0.8] * (len(seen) - ramp + 1), abs=1e-3)  # then held at 0.8
    for before, after in zip(zeros, zeros[1:]):
        assert all(bool(torch.all(after[n][before[n]])) for n in before)
    assert zero_fraction(out) == pytest.approx(0.8, abs=1e-3)
    assert all(out.encodings[n]["sparse"] is True for n in prunable_weights(out))


def test_without_fine_tuning_the_final_cut_is_made_at_once() -> None:
    out = MagnitudePruner().apply(
        tiny_model("mlp"), {"sparsity": 0.7, "scope": "layer", "finetune_epochs": 0, "ramp_epochs": 0}, make_context(tiny_data())
    )
    skipped = dataclasses.replace(make_context(tiny_data()), fine_tune=lambda model, epochs, **_: model)
    ramped = MagnitudePruner().apply(
        tiny_model("mlp"), {"sparsity": 0.7, "scope": "layer", "finetune_epochs": 2, "ramp_epochs": 2}, skipped
    )
    for name, w in prunable_weights(out).items():
        assert torch.equal(prunable_weights(ramped)[name], w), name


def test_a_ramp_longer_than_fine_tuning_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`ramp_epochs` \(3\) must not exceed `finetune_epochs` \(2\)"):
        MagnitudePruner().resolve_params({"sparsity": 0.5, "finetune_epochs": 2, "ramp_epochs": 3})
