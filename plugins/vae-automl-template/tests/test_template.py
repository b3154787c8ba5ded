"""The template plugin passes vae-automl's compressor contract and is found through its entry point."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD", "1")

from vae_automl import packing
from vae_automl.components import Compressor
from vae_automl.testing import CompressorContract, make_context, tiny_model
from vae_automl.testing.compressors import tiny_data
from vae_automl_template.plugin import Float16Compressor


class TestFloat16Contract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return Float16Compressor()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"min_numel": 8}

    @pytest.fixture
    def invalid_params(self) -> list[dict[str, Any]]:
        return [{"min_numel": 100, "max_numel": 10}]


def test_halves_the_size() -> None:
    model = tiny_model("mlp")
    out = Float16Compressor().apply(model, {"min_numel": 0, "max_numel": None}, make_context(tiny_data()))
    assert packing.theoretical_bits(out) * 2 == packing.theoretical_bits(model)
    assert packing.size_bytes(out) < 0.6 * packing.size_bytes(model)  # the rest is the JSON header


def test_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    from vae_automl.plugin_manager import ENTRY_POINT_GROUP, new_plugin_manager
    from vae_automl.registry import Registry

    (ep,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "template"]
    pm = new_plugin_manager(autoload=False)  # only this plugin, whatever else is installed
    pm.register(ep.load(), name=ep.name)
    registry = Registry.from_plugin_manager(pm)
    assert registry.compressors.plugin_of("template_fp16") == "template"
    assert registry.compressors.entry("template_fp16").version == "0.1.0"
