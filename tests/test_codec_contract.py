"""The contract suite on a plugin with its own codec: it fails on a codec without its spec and passes once complete."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lowrank_plugin import LowRankCodec, LowRankCompressor, SpeclessLowRankCodec

from vae_automl.builtin.objectives_impl import stored_parameters
from vae_automl.components import Compressor
from vae_automl.storage.codec import Codec
from vae_automl.testing import CompressorContract, tiny_model
from vae_automl.testing.compressors import make_context, tiny_data


class TestCompleteLowRank(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return LowRankCompressor()

    @pytest.fixture
    def codecs(self) -> list[Codec]:
        return [LowRankCodec()]


class TestSpeclessLowRankFails(CompressorContract):
    """Every check that should catch the missing spec is run and must fail; the others still pass."""

    @pytest.fixture
    def compressor(self) -> Compressor:
        return LowRankCompressor()

    @pytest.fixture
    def codecs(self) -> list[Codec]:
        return [SpeclessLowRankCodec()]

    def test_compresses_below_dense_float32(self, compressor: Compressor, params: dict[str, Any], base_model: Any,
                                            codecs: list[Codec]) -> None:
        with pytest.raises(AssertionError, match="not less than the .* bytes of the input in dense float32"):
            super().test_compresses_below_dense_float32(compressor, params, base_model, codecs)

    def test_codec_contract(self, compressor: Compressor, params: dict[str, Any], base_model: Any,
                            codecs: list[Codec]) -> None:
        with pytest.raises(AssertionError, match=r"keeps \[.*'[uv]'.*\] of .* in the JSON header"):
            super().test_codec_contract(compressor, params, base_model, codecs)


def test_params_counts_the_stored_factors() -> None:
    model = tiny_model("mlp")
    out = LowRankCompressor().apply(model, {"rank_ratio": 0.25}, make_context(tiny_data()))
    dense_nonzero = sum(int(torch.count_nonzero(t)) for t in out.state_dict().values())
    stored = stored_parameters(out, {"lowrank": LowRankCodec(), **_builtin()})
    factors = sum(spec["rank"] * (len(spec["u"]) + len(spec["v"][0])) for spec in out.encodings.values())
    others = sum(t.numel() for n, t in out.state_dict().items() if n not in out.encodings)
    assert stored == factors + others < dense_nonzero


def _builtin() -> dict[str, Codec]:
    from vae_automl.storage.codecs import builtin_codecs

    return builtin_codecs()


def test_quantizer_after_the_codec_is_refused_not_dropped() -> None:
    model = LowRankCompressor().apply(tiny_model("mlp"), {}, make_context(tiny_data()))
    from vae_automl.builtin.quantization import UniformQuantizer

    with pytest.raises(ValueError, match="stored by codec 'lowrank' from an earlier stage; uniform quantizes only"):
        UniformQuantizer().apply(model, {"bits": 4}, make_context(tiny_data()))
