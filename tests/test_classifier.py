"""The classifier task: architectures, loss, accuracy, logit distillation, and a search whose front exports and reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_automl.api import search
from vae_automl.builtin.classifiers import LeNet5, LeNet300100, ZooCNN
from vae_automl.classifier import accuracy_of, evaluate_accuracy, logit_distillation
from vae_automl.config import load_space_text
from vae_automl.errors import ConfigError
from vae_automl.layers import channel_groups
from vae_automl.loading import load
from vae_automl.registry import get_registry


@pytest.mark.parametrize(("arch", "params"), [(LeNet5, 431_080), (LeNet300100, 266_610), (ZooCNN, 2_464)])
def test_reference_architectures_have_their_published_parameter_counts(arch: Any, params: int) -> None:
    a = arch()
    model = a.build(a.config_from_params({p.name: p.default for p in a.params}, (1, 28, 28)))
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_channel_groups_shrink_to_the_config_they_describe() -> None:
    from vae_automl.builtin.pruning_impl import shrink

    a = get_registry().architectures.get("zoo_cnn")
    model = a.build(a.config_from_params({"width": 1.0, "activation": "tanh", "num_classes": 10}, (1, 28, 28)))
    groups = channel_groups(model, architecture=a)
    assert [g.config_key for g in groups] == ["conv_channels"] * 3 + ["hidden_widths"]
    keep = [torch.arange(max(1, g.size // 2)) for g in groups]
    small = shrink(model, groups, keep, get_registry().build_model)  # strict load: shapes must match the config
    assert small.config["conv_channels"] == [4, 3, 2] and small.config["hidden_widths"] == [10]
    x = torch.rand(2, 1, 28, 28)
    assert small(x).shape == (2, 10)


def test_accuracy_and_logit_distillation_against_hand_computed_values() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [1.0, 1.5]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy_of(lambda x: x, logits, labels) == 75.0
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        accuracy_of(lambda x: x, logits, labels[:3])
    assert float(logit_distillation(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-7)
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    p = torch.softmax(teacher / 2.0, 1)[0]
    expected = 4.0 * float((p * (p.log() - torch.log(torch.tensor([0.5, 0.5])))).sum())
    assert float(logit_distillation(student, teacher, 2.0)) == pytest.approx(expected, rel=1e-6)


SPACE = """
name: classifier-test
task: classifier
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture:
  lenet_300_100:
    width: {choices: [0.1, 0.2]}
training: {epochs: 4, batch_size: 64, lr: 3.0e-3}
compressors:
  - {name: distill, optional: true, params: {width_ratio: 0.5, epochs: 2}}
  - {name: magnitude_prune, optional: true, params: {sparsity: 0.7, finetune_epochs: 1}}
  - {name: kmeans, optional: true, params: {bits: 4}}
  - {name: entropy_code, optional: true, params: {container: compact}}
objectives: [test_accuracy, size_bytes]
record: [params, latency_ms]
sampler: {name: random, seed: 0}
latency: {batch_size: 16, repeats: 2, warmup: 1}
trials: 4
"""
ENQUEUED = [
    {"lenet_300_100.width": 0.2, "compressor0": "none", "compressor1": "none", "compressor2": "none", "compressor3": "none"},
    {"lenet_300_100.width": 0.2, "compressor0": "distill", "compressor1": "magnitude_prune", "compressor2": "kmeans",
     "compressor3": "entropy_code"},
]


def test_classifier_search_front_export_and_report(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import optuna

    from vae_automl.export import export_study
    from vae_automl.report import write_report

    space = load_space_text(SPACE, "classifier-test.yaml")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search(space, trials=0, storage=storage, out_dir=tmp_path / "run", show_progress=False)
    handle = optuna.load_study(study_name="classifier-test", storage=storage)
    for params in ENQUEUED:
        handle.enqueue_trial(params)
    result = search(space, trials=2, storage=storage, out_dir=tmp_path / "run", show_progress=False)
    assert result.completed == 2
    float_trial, compressed = (handle.trials[k].user_attrs["record"] for k in (0, 1))
    assert float_trial["metrics"]["test_accuracy"] > 80.0  # 4 epochs of a 60-20-10 MLP on 8x8 digits
    assert compressed["metrics"]["size_bytes"] < float_trial["metrics"]["size_bytes"] / 5
    assert compressed["metrics"]["test_accuracy"] > 50.0

    folders = export_study(storage, "classifier-test", tmp_path / "export", trials=[0, 1])
    for folder, record in zip(folders, (float_trial, compressed), strict=True):
        manifest = json.loads((folder / "manifest.json").read_text())
        weights = "weights.vac" if record is compressed else "weights.safetensors"  # the compact container is no safetensors
        assert {"model.onnx", "model.pt2", "model.pt", weights} <= set(manifest["files"])
        other = "weights.safetensors" if record is compressed else "weights.vac"
        assert other not in manifest["files"] and not (folder / other).exists()
        for fmt in ("safetensors", "onnx", "pt2", "torchscript"):
            assert manifest["remeasured"][fmt]["test_accuracy"] == pytest.approx(record["metrics"]["test_accuracy"], abs=0.3)
        assert all(c["ok"] for c in manifest["checks"])
        assert {c["figure"] for c in manifest["checks"]} >= {"test_accuracy", "size_bytes"}
        assert (folder / weights).stat().st_size == record["metrics"]["size_bytes"]
        loaded = load(folder)  # sha256-verified, then decoded from either container
        assert loaded.container == ("compact" if record is compressed else "safetensors")
        assert ((folder / weights).read_bytes()[:3] == b"VAC") == (record is compressed)
        assert Path(record["artifact"]).suffix == Path(weights).suffix

    written = write_report(storage, "classifier-test", tmp_path / "report")
    page = written[-1].read_text()
    assert "predicted classes" in page and "no images" not in page


def test_task_mismatch_is_refused_naming_the_key() -> None:
    text = SPACE.replace("task: classifier\n", "")
    with pytest.raises(ConfigError, match="lenet_300_100"):
        load_space_text(text, "classifier-test.yaml")


def test_classifier_trains_above_chance_and_evaluate_accuracy_keeps_the_mode() -> None:
    from vae_automl.data import load_images, load_labels, make_splits
    from vae_automl.train import TrainConfig, train

    registry = get_registry()
    images = load_images("digits", registry=registry)
    labels = load_labels("digits", len(images), registry=registry)
    from vae_automl.data import SplitConfig

    data = make_splits(images, SplitConfig(), "cpu", spec="digits", labels=labels)
    a = registry.architectures.get("lenet_300_100")
    torch.manual_seed(0)
    model = a.build(a.config_from_params({"width": 0.2, "activation": "relu", "num_classes": 10}, data.input_shape))
    before = evaluate_accuracy(model, data.test, data.test_labels)
    train(model, data, TrainConfig(epochs=3, batch_size=64, lr=3e-3), task=registry.tasks.get("classifier"))
    model.train()
    after = evaluate_accuracy(model, data.test, data.test_labels)
    assert model.training
    assert after > 80.0 > before
