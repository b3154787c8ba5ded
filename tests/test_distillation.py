"""Distillation: a smaller working student, the teacher untouched, the loss terms right, in a trial pipeline."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_automl import packing
from vae_automl.builtin.distillation import Distiller
from vae_automl.builtin.distillation_impl import gaussian_kl, student_config
from vae_automl.components import Compressor
from vae_automl.config import load_space_text
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl.testing import CompressorContract, make_context, tiny_model
from vae_automl.testing.compressors import tiny_data
from vae_automl.train import evaluate_elbo
from vae_automl.trial import prepare, run_trial
from vae_automl.vae import VAE
from conftest import recording_fine_tune


class TestDistillContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> Compressor:
        return Distiller()

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        return {"width_ratio": 0.5, "latent_dim_ratio": 0.5, "epochs": 1}


def _params(model: VAE) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("init", ["teacher", "scratch"])
def test_student_is_smaller_and_teacher_untouched(init: str) -> None:
    teacher = tiny_model("mlp")
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    values = {p.name: p.default for p in Distiller.params}
    values.update(width_ratio=0.5, epochs=2, init=init)
    student = Distiller().apply(teacher, values, make_context(tiny_data(), teacher=teacher))
    assert student.config["encoder_widths"] == [16] and student.latent_dim == teacher.latent_dim
    assert _params(student) < 0.6 * _params(teacher)
    assert math.isfinite(evaluate_elbo(student, tiny_data().test))
    assert packing.size_bytes(student) < packing.size_bytes(teacher)
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_fewer_latent_units_keep_the_most_active() -> None:
    teacher = tiny_model("conv")
    values = {p.name: p.default for p in Distiller.params}
    values.update(width_ratio=0.5, latent_dim_ratio=0.5, epochs=1)
    student = Distiller().apply(teacher, values, make_context(tiny_data(), teacher=teacher))
    assert student.latent_dim == 2
    assert student.config["encoder_channels"] == [2, 4]
    x = tiny_data().test[:8]
    with torch.no_grad():
        assert student.decode(student.encode(x)[0]).shape == x.shape


def test_distillation_terms_pull_the_student_towards_the_teacher() -> None:
    teacher = tiny_model("mlp")
    x = tiny_data().test
    values = {p.name: p.default for p in Distiller.params}

    def posterior_gap(alpha: float) -> float:
        student = Distiller().apply(teacher, {**values, "alpha": alpha, "beta": 0.0, "epochs": 3, "init": "scratch"},
                                    make_context(tiny_data(), teacher=teacher))
        with torch.no_grad():
            return float(gaussian_kl(*student.encode(x), *teacher.encode(x)).mean())

    assert posterior_gap(10.0) < 0.5 * posterior_gap(0.0)


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 3, generator=g) for _ in range(4))
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), expected)


def test_a_classifier_student_trains_on_alpha_times_the_teachers_soft_targets() -> None:
    from vae_automl.classifier import logit_distillation

    arch = get_registry().architectures.get("lenet_300_100")
    torch.manual_seed(0)
    teacher = arch.build(arch.config_from_params({"width": 0.05, "activation": "relu", "num_classes": 10}, (1, 28, 28)))
    ctx = make_context(tiny_data(), teacher=teacher)
    seen = recording_fine_tune(ctx)
    params = {"width_ratio": 0.5, "epochs": 1, "init": "scratch", "temperature": 3.0}
    student = Distiller().apply(teacher, {**params, "alpha": 2.0}, ctx)
    Distiller().apply(teacher, {**params, "alpha": 0.0}, ctx)
    assert callable(seen[0]) and seen[1] is None  # alpha 0: the task loss alone
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        want = 2.0 * logit_distillation(student(x), teacher(x), 3.0)
        assert float(seen[0](student, x)) == pytest.approx(float(want), rel=1e-5) and float(want) > 0


def test_unknown_architecture_and_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="has none of them"):
        student_config({"architecture": "mine", "latent_dim": 4}, 0.5, 4)
    teacher = tiny_model("mlp")
    values = {p.name: p.default for p in Distiller.params}
    with pytest.raises(ValueError, match="width_ratio"):
        Distiller().apply(teacher, {**values, "width_ratio": 0.0}, make_context(tiny_data(), teacher=teacher))


PIPELINE_SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 400}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 32, latent_dim: 4}
training: {epochs: 2, batch_size: 64}
compressors:
  - {name: magnitude_prune, params: {sparsity: 0.5, finetune_epochs: 1}}
  - {name: distill, params: {width_ratio: 0.5, epochs: 1}}
objectives: [test_elbo_nats, size_bytes]
record: [params]
"""


def test_pipeline_distills_then_prunes(tmp_path: Path) -> None:
    space = load_space_text(PIPELINE_SPACE, "distill.yaml")
    spec = resolve(space, {})
    assert [name for name, _ in spec.pipeline] == ["distill", "magnitude_prune"]
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    record = run_trial(env, spec, 0)
    assert record["model_config"]["encoder_widths"] == [16]
    assert math.isfinite(record["metrics"]["test_elbo_nats"])
    weights, biases = 64 * 16 + 2 * 16 * 4 + 4 * 16 + 16 * 64, 16 + 4 + 4 + 16 + 64
    assert record["metrics"]["params"] <= weights // 2 + biases  # the student, with half its weights zero
