"""The task concept: the ``task:`` key, the register_tasks hook, labels, and the trainer's dispatch to a task's loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from vae_automl import hookimpl
from vae_automl.builtin.architectures import MLPArchitecture
from vae_automl.components import Task
from vae_automl.config import load_space_text
from vae_automl.data import SplitConfig, load_images, load_labels, make_splits
from vae_automl.errors import ConfigError, DataError
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl.train import TrainConfig, evaluate_elbo, train
from vae_automl.trial import prepare, run_trial

SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 2, batch_size: 64}
record: [params]
"""


class LabelledTask(Task):
    """Trains on reconstruction MSE; remembers the labels it was given, to check they belong to the batch."""

    name = "labelled_test"
    needs_labels = True
    default_objectives = ("size_bytes",)

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss(self, model: Any, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        assert y is not None
        self.seen.append((x.detach().clone(), y.clone()))
        mu, _ = model.encode(x)
        return ((model.mean_image(model.decode(mu)) - x) ** 2).flatten(1).sum(1).mean()

    def validation_loss(self, model: Any, data: Any, config: TrainConfig, seed: int) -> float:
        return 1.0


class LabelledPlugin:
    def __init__(self) -> None:
        self.task = LabelledTask()

    @hookimpl
    def register_tasks(self, register: Callable[[Task], None]) -> None:
        register(self.task)

    @hookimpl
    def register_architectures(self, register: Callable[[Any], None]) -> None:
        arch = MLPArchitecture()
        arch.name, arch.tasks = "mlp_labelled", ("labelled_test",)
        register(arch)


def test_task_defaults_to_vae_and_lists_registered_ones() -> None:
    space = load_space_text(SPACE, "t.yaml")
    assert space.task == "vae" and not space.needs_labels
    assert space.objectives == ("test_elbo_nats", "size_bytes")
    assert "vae" in get_registry().tasks
    with pytest.raises(ConfigError, match=r"t.yaml: task: unknown task 'nope'; registered: .*vae"):
        load_space_text(SPACE + "task: nope\n", "t.yaml")


def test_architecture_of_another_task_is_a_config_error(register_plugin: Any) -> None:
    register_plugin(LabelledPlugin())
    message = str(pytest.raises(ConfigError, load_space_text, SPACE + "task: labelled_test\n", "t.yaml").value)
    assert message.startswith("t.yaml: architecture.mlp: architecture 'mlp' does not support task 'labelled_test'")
    text = SPACE.replace("mlp:", "mlp_labelled:").replace("record: [params]", "") + "task: labelled_test\n"
    space = load_space_text(text, "t.yaml")
    assert space.objectives == ("size_bytes",) and space.needs_labels
    # The ELBO objectives measure VAEs only: not listable, and left out of the default record.
    assert "test_elbo_nats" not in space.record and "params" in space.record
    with pytest.raises(ConfigError, match=r"t.yaml: objectives.0: objective 'test_elbo_nats' measures models of task vae"):
        load_space_text(text + "objectives: [test_elbo_nats]\n", "t.yaml")


def test_trainer_steps_on_the_tasks_loss_with_the_batchs_labels(register_plugin: Any, tmp_path: Path) -> None:
    plugin = register_plugin(LabelledPlugin())
    space = load_space_text(SPACE.replace("mlp:", "mlp_labelled:").replace("record: [params]", "")
                            + "task: labelled_test\n", "t.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager())
    assert env.data.train_labels is not None and len(env.data.train_labels) == len(env.data.train)
    record = run_trial(env, resolve(space, {}), 0)
    steps_per_epoch = len(env.data.train) // 64
    assert len(plugin.task.seen) == 2 * steps_per_epoch
    assert record["base"]["validation_curve"] == [1.0, 1.0]
    # Every label handed to the loss is the label of the image beside it.
    by_image = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(env.data.train, env.data.train_labels, strict=True)}
    for xb, yb in plugin.task.seen[:3]:
        assert [by_image[bytes(x.numpy().tobytes())] for x in xb] == yb.tolist()


def test_default_task_is_the_elbo_bit_for_bit() -> None:
    data = make_splits(load_images("digits"), SplitConfig(validation=0.1, test=0.2, seed=0), "cpu", spec="digits")
    arch = MLPArchitecture()
    config = arch.config_from_params({"hidden_layers": 1, "hidden_width": 16, "width_decay": 1.0, "latent_dim": 3,
                                      "activation": "relu", "likelihood": "bernoulli"}, (1, 8, 8))
    states = []
    for task in (None, get_registry().tasks.get("vae")):
        torch.manual_seed(0)
        model = arch.build(config)
        result = train(model, data, TrainConfig(epochs=2, batch_size=64), seed=3, task=task)
        states.append(model.state_dict())
        assert result.validation_curve[-1] == evaluate_elbo(model, data.validation, 1.0, seed=3)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_labels_load_only_from_datasets_that_have_them(tmp_path: Path) -> None:
    digits = load_labels("digits", 1797)
    assert digits.dtype == np.int64 and set(digits.tolist()) == set(range(10))
    np.savez(tmp_path / "x.npz", images=np.zeros((5, 4, 4), np.uint8))
    with pytest.raises(DataError, match="has no labels"):
        load_labels(f"npz:{tmp_path / 'x.npz'}", 5)
    with pytest.raises(DataError, match="expected 10 integer labels"):
        load_labels("digits", 10)


def test_mnist_labels_sit_beside_their_images(mnist_dir: Path) -> None:
    images = load_images("mnist", str(mnist_dir))
    labels = load_labels("mnist", len(images), str(mnist_dir))
    assert labels.shape == (10_000,) and labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
