"""The architecture contract: a pytest suite any architecture plugin subclasses.

Subclass :class:`ArchitectureContract`, override the ``architecture``
fixture (and optionally ``params`` and ``input_shape``)::

    import pytest
    from vae_automl.testing import ArchitectureContract
    from my_plugin import MyArchitecture

    class TestMyArchitecture(ArchitectureContract):
        @pytest.fixture
        def architecture(self):
            return MyArchitecture()

What it checks: the declaration (name, distinct parameters, defaults that
validate); the built model encodes ``N x C x H x W`` images in [0, 1] to
``(mu, logvar)`` of ``N x latent_dim`` and decodes to the input's shape, all
finite; its config is JSON and ``build(config)`` rebuilds the same tensors;
the packed file round-trips; the layer groups (``group_names`` and
``layer_groups``) put every Linear / Conv2d / ConvTranspose2d layer in
exactly one group, agree with the traced rule of :mod:`vae_automl.layers`,
and the heads compute the latent; and, if the architecture declares channel
groups, that removing half of each group's units rebuilds a working model
whose packed file rebuilds it again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from vae_automl import packing
from vae_automl.builtin.pruning_impl import shrink
from vae_automl.components import Architecture
from vae_automl.layers import layer_names, traced_layer_groups
from vae_automl.plugin_manager import new_plugin_manager
from vae_automl.registry import Registry
from vae_automl.vae import VAE


def registry_with_architecture(architecture: Architecture) -> Registry:
    """The built-in registry (no installed plugins), plus ``architecture`` if its name is not already there."""

    registry = Registry.from_plugin_manager(new_plugin_manager(autoload=False))
    if architecture.name not in registry.architectures:
        registry.architectures.add(architecture, "contract-test", "0")
    return registry


class ArchitectureContract:
    """Subclass and override the ``architecture`` fixture (and ``params``, ``input_shape``)."""

    @pytest.fixture
    def architecture(self) -> Architecture:
        raise NotImplementedError("override the `architecture` fixture to return your Architecture instance")

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        """Parameter values to build with (defaults fill the rest); keep the model small."""
        return {}

    @pytest.fixture
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    @pytest.fixture
    def model(self, architecture: Architecture, params: dict[str, Any], input_shape: tuple[int, int, int]) -> VAE:
        torch.manual_seed(0)
        return architecture.build(architecture.config_from_params(architecture.resolve_params(params), input_shape)).eval()

    @pytest.fixture
    def images(self, input_shape: tuple[int, int, int]) -> torch.Tensor:
        return torch.rand(6, *input_shape, generator=torch.Generator().manual_seed(0))

    def test_declaration(self, architecture: Architecture, params: dict[str, Any]) -> None:
        assert isinstance(architecture, Architecture)
        assert architecture.name, "an architecture needs a name"
        names = [p.name for p in architecture.params]
        assert len(set(names)) == len(names), f"duplicate parameter names: {names}"
        architecture.validate_params({p.name: p.default for p in architecture.params})
        architecture.resolve_params(params)

    def test_encode_decode_shapes(self, model: VAE, images: torch.Tensor) -> None:
        assert isinstance(model, VAE), f"build returned {type(model).__name__}, not a VAE"
        with torch.no_grad():
            mu, logvar = model.encode(images)
            decoded = model.decode(mu)
        assert mu.shape == (len(images), model.latent_dim) and logvar.shape == mu.shape
        assert decoded.shape == images.shape, f"decode gives {tuple(decoded.shape)}, the input is {tuple(images.shape)}"
        for name, t in (("mu", mu), ("logvar", logvar), ("decoded", decoded)):
            assert torch.isfinite(t).all(), f"{name} has non-finite values"

    def test_config_rebuilds_the_model(self, architecture: Architecture, model: VAE) -> None:
        config = json.loads(json.dumps(model.config))
        assert config["architecture"] == architecture.name
        rebuilt = architecture.build(config)
        rebuilt.load_state_dict(model.state_dict(), strict=True)

    def test_packed_round_trip(self, architecture: Architecture, model: VAE) -> None:
        data = packing.serialize_model(model)
        back = packing.deserialize_model(data, registry_with_architecture(architecture))
        for name, tensor in model.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), f"{name} differs after deserialize"

    def test_layer_groups(self, architecture: Architecture, model: VAE, images: torch.Tensor) -> None:
        assert architecture.group_names, (
            f"architecture {architecture.name!r} declares no layer groups: set `group_names` and implement `layer_groups(model)`"
        )
        groups = architecture.layer_groups(model)
        assert set(groups) == set(architecture.group_names), (
            f"layer_groups returned {sorted(groups)}, group_names declares {sorted(architecture.group_names)}"
        )
        placed = [layer for layers in groups.values() for layer in layers]
        assert sorted(placed) == sorted(layer_names(model)), (
            f"every Linear/Conv2d/ConvTranspose2d layer must be in exactly one group; "
            f"layers {layer_names(model)}, groups {groups}"
        )
        traced = traced_layer_groups(model, images)
        if traced:
            assert {g: set(v) for g, v in traced.items()} == {g: set(groups.get(g, ())) for g in traced}, (
                f"declared groups {groups} disagree with the layers that run in encode / decode {traced}"
            )

    def test_channel_groups_shrink(self, architecture: Architecture, model: VAE, images: torch.Tensor) -> None:
        if not architecture.has_channel_groups:
            pytest.skip("the architecture declares no channel groups (no structured pruning)")

        groups = architecture.channel_groups(model, include_latent=True)
        assert groups, "channel_groups returned no groups"
        keep = [torch.arange(max(1, g.size // 2)) for g in groups]
        small = shrink(model, groups, keep, architecture.build)
        with torch.no_grad():
            mu, _ = small.encode(images)
            assert small.decode(mu).shape == images.shape
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        # The shrunk model's file rebuilds it from its config alone (the JSON header: no pickled module).
        back = packing.deserialize_model(packing.serialize_model(small), registry_with_architecture(architecture))
        for name, tensor in small.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), f"{name} differs after deserializing the shrunk model"
