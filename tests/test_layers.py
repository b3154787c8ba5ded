"""Layer groups (vae_automl.layers), the architecture contract, and the loader's composition rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml
from torch import nn

from vae_automl.builtin.architectures import ConvArchitecture, MLPArchitecture
from vae_automl.builtin.architectures_impl import MLPVAE
from vae_automl.components import Architecture, Compressor
from vae_automl.config import load_space_text
from vae_automl.errors import ConfigError
from vae_automl.layers import layer_names, traced_layer_groups
from vae_automl.testing import ArchitectureContract, registry_with_architecture
from vae_automl.vae import VAE


class NoGroupsArchitecture(Architecture):
    """An MLP family that declares neither layer nor channel groups (the broken plugin)."""

    name = "nogroups"
    params = MLPArchitecture.params

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        return {**MLPArchitecture().config_from_params(values, input_shape), "architecture": self.name}

    def build(self, config: dict[str, Any]) -> VAE:
        return MLPVAE(config)


class TestMLPContract(ArchitectureContract):
    @pytest.fixture
    def architecture(self) -> Architecture:
        return MLPArchitecture()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"hidden_layers": 2, "hidden_width": 16, "latent_dim": 3}


class TestConvContract(ArchitectureContract):
    @pytest.fixture
    def architecture(self) -> Architecture:
        return ConvArchitecture()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"blocks": 2, "base_channels": 4, "latent_dim": 3}


class TestNoGroupsFailsTheContract(ArchitectureContract):
    """The suite must fail on an architecture without layer groups: each check that should fail is inverted here."""

    @pytest.fixture
    def architecture(self) -> Architecture:
        return NoGroupsArchitecture()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"hidden_width": 16, "latent_dim": 3}

    def test_layer_groups(self, architecture: Architecture, model: VAE, images: torch.Tensor) -> None:
        with pytest.raises(AssertionError, match="declares no layer groups"):
            super().test_layer_groups(architecture, model, images)

    def test_wrong_groups_fail(self, model: VAE, images: torch.Tensor) -> None:
        class Swapped(NoGroupsArchitecture):
            group_names = ("encoder", "heads", "decoder")

            def layer_groups(self, model: VAE) -> dict[str, tuple[str, ...]]:
                # mu in the encoder group: every layer placed once, but not where it runs
                return {"encoder": ("encoder.0", "mu"), "heads": ("logvar",), "decoder": ("decoder.0", "decoder.2")}

        with pytest.raises(AssertionError, match="disagree"):
            ArchitectureContract.test_layer_groups(self, Swapped(), model, images)


def test_traced_rule_finds_the_built_in_groups() -> None:
    for arch, params in ((MLPArchitecture(), {"hidden_layers": 2, "hidden_width": 16, "latent_dim": 3}),
                         (ConvArchitecture(), {"blocks": 2, "base_channels": 4, "latent_dim": 3})):
        model = arch.build(arch.config_from_params(arch.resolve_params(params), (1, 8, 8)))
        traced = traced_layer_groups(model, torch.rand(4, 1, 8, 8))
        assert traced == {g: tuple(v) for g, v in arch.layer_groups(model).items()}
        assert sorted(sum(traced.values(), ())) == sorted(layer_names(model))


class SharedLayerVAE(VAE):
    """One Linear used by both encode and decode: the rule cannot tell its group."""

    def __init__(self) -> None:
        super().__init__({"architecture": "x", "input_shape": [1, 2, 2], "latent_dim": 4})
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 8)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.shared(x.flatten(1))).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.shared(z).view(-1, 1, 2, 2)


def test_traced_rule_gives_no_groups_when_a_layer_runs_in_both() -> None:
    assert traced_layer_groups(SharedLayerVAE(), torch.rand(3, 1, 2, 2)) == {}


def _space(compressors: list[Any], architecture: str = "nogroups") -> str:
    return yaml.safe_dump({"dataset": "digits", "architecture": {architecture: {"hidden_width": 8, "latent_dim": 2}},
                           "compressors": compressors, "trials": 1})


def test_group_bits_on_an_architecture_without_groups_refused_at_load() -> None:
    registry = registry_with_architecture(NoGroupsArchitecture())
    with pytest.raises(ConfigError, match=r"compressors\.0: compressor 'uniform' needs layer groups .*bits_encoder.*"
                                          r"architecture 'nogroups' declares none"):
        load_space_text(_space([{"name": "uniform", "params": {"bits": 4, "bits_encoder": 2}}]), "s.yaml", registry)
    # plain bits are fine, and so are per-group bits on a built-in
    load_space_text(_space([{"name": "uniform", "params": {"bits": 4}}]), "s.yaml", registry)
    load_space_text(_space([{"name": "uniform", "params": {"bits_encoder": 2}}], "mlp"), "s.yaml", registry)


def test_structured_pruning_without_channel_groups_refused_at_load() -> None:
    registry = registry_with_architecture(NoGroupsArchitecture())
    with pytest.raises(ConfigError, match="'structured_prune' needs channel groups"):
        load_space_text(_space(["structured_prune"]), "s.yaml", registry)
    with pytest.raises(ConfigError, match="'distill' needs channel groups"):
        load_space_text(_space(["distill"]), "s.yaml", registry)
    load_space_text(_space([{"name": "distill", "params": {"init": "scratch"}}]), "s.yaml", registry)


class CodecStage(Compressor):
    name = "own_codec"
    stage = "prune"
    gives = "codec:own"

    def apply(self, model: VAE, params: dict[str, Any], ctx: Any) -> VAE:
        raise NotImplementedError


def test_quantizer_after_a_plugin_codec_refused_naming_both() -> None:
    registry = registry_with_architecture(NoGroupsArchitecture())
    registry.compressors.add(CodecStage(), "test", "0")
    with pytest.raises(ConfigError, match=r"compressors\.0\.name: compressor 'uniform' \(stage quantize\) takes "
                                          r"dense, masked, quantized, but compressor 'own_codec' \(stage prune\) "
                                          r"before it gives codec:own"):
        load_space_text(_space(["uniform", "own_codec"]), "s.yaml", registry)
    # optional codec stage: still refused (the pipeline with it cannot work); codec stage alone is fine
    with pytest.raises(ConfigError, match="own_codec"):
        load_space_text(_space([{"name": "own_codec", "optional": True}, "uniform"]), "s.yaml", registry)
    load_space_text(_space(["own_codec"]), "s.yaml", registry)
