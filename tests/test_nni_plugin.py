"""The NNI plugin package (plugins/vae-automl-nni): entry point, registration, the compressor contract."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
import torch

pytest.importorskip("nni", reason="nni is not installed (pip install plugins/vae-automl-nni)")
vae_automl_nni = pytest.importorskip("vae_automl_nni", reason="the vae-automl-nni plugin is not installed")

from vae_automl import packing  # noqa: E402
from vae_automl.components import Compressor  # noqa: E402
from vae_automl.registry import get_registry  # noqa: E402
from vae_automl.testing import CompressorContract, make_context, tiny_model  # noqa: E402
from vae_automl.testing.compressors import tiny_data  # noqa: E402
from vae_automl_nni import NniPruner, NniQuantizer  # noqa: E402


def test_entry_point_and_registration(register_plugin: Any) -> None:
    points = [ep for ep in metadata.entry_points(group="vae_automl") if ep.value == "vae_automl_nni.plugin"]
    assert points, "vae-automl-nni declares no entry point in group vae_automl"
    register_plugin(points[0].load(), name="nni")
    registry = get_registry()
    assert registry.compressors.get("nni_prune").stage == "prune"
    assert registry.compressors.get("nni_quantize").stage == "quantize"
    assert registry.compressors.plugin_of("nni_prune") == "nni"


class TestNniLevelContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return NniPruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"pruner": "level", "sparsity": 0.5, "finetune_epochs": 1}


@pytest.mark.slow
class TestNniL1NormContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return NniPruner()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"pruner": "l1_norm", "sparsity": 0.5, "finetune_epochs": 0}


@pytest.mark.slow
class TestNniPtqContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return NniQuantizer()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"bits": 4, "steps": 4}


def _apply(compressor: Compressor, model: Any, **params: Any) -> Any:
    values = {p.name: params.get(p.name, p.default) for p in compressor.params}
    return compressor.apply(model, values, make_context(tiny_data(), teacher=model))


def test_level_pruner_reaches_sparsity_and_marks_sparse() -> None:
    out = _apply(NniPruner(), tiny_model("mlp"), pruner="level", sparsity=0.7, finetune_epochs=1)
    w = out.get_parameter("encoder.0.weight")
    assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    assert out.encodings["encoder.0.weight"]["sparse"] is True


@pytest.mark.parametrize("pruner", ["l2_norm", "taylor"])
def test_channel_pruners_shrink_the_model(pruner: str) -> None:
    model = tiny_model("conv")
    out = _apply(NniPruner(), model, pruner=pruner, sparsity=0.5, finetune_epochs=0, taylor_steps=2)
    assert out.config["encoder_channels"] == [2, 4]
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())


def test_quantized_weights_sit_on_a_4_bit_grid() -> None:
    out = _apply(NniQuantizer(), tiny_model("mlp"), bits=4, granularity="out_channel", steps=2)
    w = out.get_parameter("decoder.0.weight").detach()
    assert max(len(torch.unique(row)) for row in w) <= 16
    assert out.encodings["decoder.0.weight"]["bits"] == 4
    assert packing.size_bytes(out) < 0.4 * packing.size_bytes(tiny_model("mlp"))


CLASSIFIER_SPACE = """
name: nni-classifier
task: classifier
dataset: {{spec: digits, split: {{validation: 0.1, test: 0.2, seed: 0}}}}
device: cpu
seed: 0
architecture:
  lenet_300_100: {{width: 0.2}}
training: {{epochs: 4, batch_size: 64, lr: 3.0e-3}}
compressors: {compressors}
objectives: [test_accuracy, size_bytes]
record: [params]
"""
NNI_CLASSIFIER_PIPELINES = {
    "level+qat": [{"name": "nni_prune", "params": {"pruner": "level", "sparsity": 0.7, "finetune_epochs": 1}},
                  {"name": "nni_quantize", "params": {"quantizer": "qat", "bits": 4, "steps": 20}},
                  {"name": "entropy_code"}],
    "l1_norm+ptq": [{"name": "nni_prune", "params": {"pruner": "l1_norm", "sparsity": 0.5, "finetune_epochs": 1}},
                    {"name": "nni_quantize", "params": {"quantizer": "ptq", "bits": 8, "steps": 4}}],
    "taylor": [{"name": "nni_prune", "params": {"pruner": "taylor", "sparsity": 0.5, "finetune_epochs": 2,
                                                "taylor_steps": 2}}],
}


@pytest.mark.parametrize("pipeline", sorted(NNI_CLASSIFIER_PIPELINES))
def test_nni_compressors_work_on_a_classifier(pipeline: str, register_plugin: Any, tmp_path: Any) -> None:
    """NNI's training steps use the classifier's cross-entropy, not a VAE's ELBO (which has no latent_dim to draw)."""
    import json

    from vae_automl.config import load_space_text
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.space import resolve
    from vae_automl.trial import prepare, run_trial

    import vae_automl_nni.plugin

    register_plugin(vae_automl_nni.plugin, name="nni")
    registry = get_registry()
    pm = get_plugin_manager()
    results = {}
    for name, compressors in (("fp32", []), (pipeline, NNI_CLASSIFIER_PIPELINES[pipeline])):
        space = load_space_text(CLASSIFIER_SPACE.format(compressors=json.dumps(compressors)), f"{name}.yaml", registry)
        env = prepare(space, tmp_path, registry, pm)
        record = run_trial(env, resolve(space, {}, registry), len(results))
        results[name] = record
    fp32, out = results["fp32"].metrics, results[pipeline].metrics
    assert fp32["test_accuracy"] > 80.0
    assert out["test_accuracy"] > 50.0  # still a classifier (chance is 10%)
    assert out["size_bytes"] < fp32["size_bytes"] / (4 if pipeline != "taylor" else 1.5)
    model = packing.deserialize_model(open(results[pipeline].artifact, "rb").read())
    if pipeline == "l1_norm+ptq":
        assert model.config["hidden_widths"] == [30, 10]  # half of 60 and 20 hidden units removed
    if pipeline == "level+qat":
        w = model.get_parameter("head.0.weight").detach()
        assert float((w == 0).float().mean()) >= 0.69
        assert max(len(torch.unique(r[r != 0])) for r in w) <= 16
