from __future__ import annotations

import pytest
import torch

from vae_automl import packing
from vae_automl.config import load_space_text
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl.vae import negative_elbo


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 10)])
@pytest.mark.parametrize("arch,values", [
    ("mlp", {"hidden_layers": 2, "hidden_width": 32, "width_decay": 0.5, "latent_dim": 4, "activation": "gelu", "likelihood": "bernoulli"}),
    ("conv", {"blocks": 2, "base_channels": 4, "kernel_size": 3, "latent_dim": 4, "activation": "relu", "likelihood": "gaussian"}),
])
def test_shapes_elbo_and_rebuild(shape: tuple[int, ...], arch: str, values: dict) -> None:
    registry = get_registry()
    architecture = registry.architectures.get(arch)
    config = architecture.config_from_params(values, shape)
    torch.manual_seed(0)
    model = architecture.build(config)
    x = torch.rand(5, *shape)
    decoded, mu, logvar = model(x)
    assert decoded.shape == x.shape and mu.shape == (5, 4) and logvar.shape == (5, 4)
    loss = negative_elbo(model, x)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.sample(3).shape == (3, *shape)
    assert model.reconstruct(x).min() >= 0 and model.reconstruct(x).max() <= 1
    rebuilt = packing.deserialize_model(packing.serialize_model(model))
    assert list(rebuilt.state_dict()) == list(model.state_dict())  # zip below would stop at the shorter one
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_mlp_widths_follow_decay() -> None:
    config = get_registry().architectures.get("mlp").config_from_params(
        {"hidden_layers": 3, "hidden_width": 400, "width_decay": 0.5, "latent_dim": 20, "activation": "relu",
         "likelihood": "bernoulli"}, (1, 28, 28))
    assert config["encoder_widths"] == [400, 200, 100] and config["decoder_widths"] == [100, 200, 400]


def test_seed_preset_is_784_400_20() -> None:
    space = load_space_text("architecture:\n  mlp:\n    preset: seed_784_400_20\n", "s.yaml")
    spec = resolve(space, {})
    registry = get_registry()
    model = registry.build_model(registry.architectures.get("mlp").config_from_params(spec.architecture_params, (1, 28, 28)))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes[:2] == [(400, 784), (400,)] and (20, 400) in shapes and (784, 400) in shapes
