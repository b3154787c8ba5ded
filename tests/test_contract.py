"""Every built-in compressor passes the plugin contract (vae_automl.testing.CompressorContract).

To add a compressor: subclass CompressorContract below with a ``compressor``
fixture returning an instance (registered or not), a cheap ``params``
fixture, and ``invalid_params`` listing combinations its ``validate_params``
must refuse. Each class runs every contract test on a tiny MLP and conv VAE.
"""

from __future__ import annotations

from typing import Any

import pytest

from vae_automl.builtin.entropy_coding import EntropyCode
from vae_automl.builtin.quantization import KMeansQuantizer, Pow2Quantizer, UniformQuantizer
from vae_automl.builtin.weight_vae import WeightVAE
from vae_automl.components import Compressor
from vae_automl.testing import CompressorContract


class TestUniformContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return UniformQuantizer()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"bits": 4, "bits_decoder": 3, "symmetric": False, "qat_epochs": 1}

    @pytest.fixture
    def invalid_params(self) -> list[dict[str, Any]]:
        return [{"bits": 1, "symmetric": False}, {"bits": 4, "bits_heads": 1, "symmetric": False}]


class TestPow2Contract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return Pow2Quantizer()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"bits": 4, "bits_heads": 6}


class TestKMeansContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return KMeansQuantizer()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"bits": 3, "init": "kmeans++", "qat_epochs": 1}


class TestEntropyCodeContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return EntropyCode()


class TestWeightVAEContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return WeightVAE()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"vae_steps": 20, "finetune_epochs": 1, "chunk": 8, "latent_dim": 2, "hidden": 8}

    @pytest.fixture
    def invalid_params(self) -> list[dict[str, Any]]:
        return [{"chunk": 4, "latent_dim": 8}]


try:  # the example plugin package, installed by `make install` (pip install -e plugins/vae-automl-template)
    from vae_automl_template.plugin import Float16Compressor
except ImportError:
    Float16Compressor = None


@pytest.mark.skipif(Float16Compressor is None, reason="plugins/vae-automl-template is not installed")
class TestTemplatePluginContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return Float16Compressor()

    @pytest.fixture
    def invalid_params(self) -> list[dict[str, Any]]:
        return [{"min_numel": 100, "max_numel": 10}]
