"""weight_vae: weights encoded by a small VAE, its decoder stored and counted, files bit-exact, the decoder amortized."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_automl import packing
from vae_automl.builtin.weight_vae import WeightVAE
from vae_automl.builtin.weight_vae_impl import decoder_bytes, to_chunks
from vae_automl.components import CompressionContext, MeasureContext
from vae_automl.data import SplitConfig, load_images, make_splits
from vae_automl.errors import ExportError
from vae_automl.registry import get_registry
from vae_automl.train import TrainConfig, evaluate_elbo, train
from vae_automl.vae import VAE


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    registry = get_registry()
    data = make_splits(load_images("digits", registry=registry), SplitConfig(), "cpu", spec="digits")
    arch = registry.architectures.get("mlp")
    torch.manual_seed(0)
    model = arch.build(arch.config_from_params({"hidden_layers": 1, "hidden_width": 64, "width_decay": 1.0,
                                                "latent_dim": 8, "activation": "relu", "likelihood": "bernoulli"},
                                               data.input_shape))
    train(model, data, TrainConfig(epochs=8, batch_size=64, lr=3e-3))

    def fine_tune(m: VAE, epochs: int, extra_loss: Any = None, after_step: Any = None, lr: float | None = None) -> VAE:
        train(m, data, TrainConfig(epochs=epochs, batch_size=64, lr=3e-3), extra_loss=extra_loss, after_step=after_step, lr=lr)
        return m

    ctx = CompressionContext(data=data, device=torch.device("cpu"), seed=0, fine_tune=fine_tune,
                             build_model=registry.build_model)
    return {"model": model, "ctx": ctx, "data": data}


def compress(setup: dict[str, Any], **params: Any) -> VAE:
    return WeightVAE().apply(setup["model"], {"vae_steps": 60, "finetune_epochs": 0, **params}, setup["ctx"])


def test_chunks_pad_the_last_one_with_zeros() -> None:
    chunks = to_chunks(torch.arange(1.0, 11.0).reshape(2, 5), 4)
    assert chunks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]


@pytest.mark.parametrize("sharing", ["shared", "layer"])
def test_file_is_bit_exact_and_its_length_is_size_bytes(setup: dict[str, Any], sharing: str, tmp_path: Path) -> None:
    original = copy.deepcopy(setup["model"].state_dict())
    out = compress(setup, sharing=sharing)
    assert all(torch.equal(t, setup["model"].state_dict()[k]) for k, t in original.items()), "the input was changed"
    data = packing.serialize_model(out)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(data)
    assert packing.size_bytes(out) == path.stat().st_size
    back = packing.deserialize_model(path.read_bytes())
    for name, tensor in out.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert packing.serialize_model(back) == data
    owners = [n for n, s in out.encodings.items() if "parts_from" not in s]
    assert len(owners) == (1 if sharing == "shared" else len(out.encodings))
    # Every Linear weight is decoded, not stored: far below its float32 bytes (a decoder per layer costs
    # about as much as these small layers save, which is why EPR's per-layer decoders are tiny).
    weights = sum(t.numel() for n, t in out.state_dict().items() if n in out.encodings)
    assert len(data) < 4 * weights / (3 if sharing == "shared" else 1)


def test_reported_size_grows_with_the_decoder_it_counts(setup: dict[str, Any]) -> None:
    small, large = compress(setup, hidden=8), compress(setup, hidden=96)
    decoder_growth = sum(decoder_bytes(s) for s in large.encodings.values()) - sum(
        decoder_bytes(s) for s in small.encodings.values())
    assert decoder_growth == 2 * (96 - 8) * (4 + 1 + 16)  # float16: latent->hidden weights+biases, hidden->chunk weights
    assert packing.size_bytes(large) - packing.size_bytes(small) >= 0.9 * decoder_growth


def test_amortized_size_counts_one_nth_of_the_decoder(setup: dict[str, Any]) -> None:
    registry = get_registry()
    objective = registry.objectives.get("size_bytes_amortized")
    one, many = compress(setup, amortize_over=1), compress(setup, amortize_over=1000)
    measure = lambda m: objective.measure(MeasureContext(model=m, data=setup["data"], device=torch.device("cpu"), seed=0,  # noqa: E731
                                                         registry=registry))
    assert measure(one) == packing.size_bytes(one)
    owned = sum(decoder_bytes(s) for s in many.encodings.values())
    assert measure(many) == pytest.approx(packing.size_bytes(many) - owned * 999 / 1000)
    # Every other model: the amortized size is the size.
    assert measure(setup["model"]) == packing.size_bytes(setup["model"])


def test_fine_tuning_keeps_the_elbo_and_the_rate_term_shrinks_the_file(setup: dict[str, Any]) -> None:
    data = setup["data"]
    base = evaluate_elbo(setup["model"], data.test)
    untuned = compress(setup, rate_weight=0.0)
    tuned = compress(setup, finetune_epochs=3, rate_weight=0.0)
    assert evaluate_elbo(tuned, data.test) < evaluate_elbo(untuned, data.test)
    assert evaluate_elbo(tuned, data.test) < 1.15 * base
    squeezed = compress(setup, finetune_epochs=3, rate_weight=1e-2)
    assert packing.size_bytes(squeezed) < packing.size_bytes(tuned)


def test_a_weight_changed_after_weight_vae_is_refused(setup: dict[str, Any]) -> None:
    out = compress(setup)
    name = next(iter(out.encodings)).removesuffix(".weight")
    with torch.no_grad():
        out.get_submodule(name).weight[0, 0] += 1e-3
    with pytest.raises(ExportError, match="not what the decoder makes"):
        packing.serialize_model(out)
