"""The built-in ``vae`` task: train on the negative (beta-)ELBO, stop early on the validation ELBO."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vae_automl.components import Task
from vae_automl.plugin_manager import hookimpl
from vae_automl.vae import evaluate_elbo, negative_elbo

if TYPE_CHECKING:
    import torch

    from vae_automl.data import DataSplits
    from vae_automl.train import TrainConfig
    from vae_automl.vae import VAE


class VaeTask(Task):
    name = "vae"
    help = "a VAE trained on the negative ELBO (nats per image); the default task"
    default_objectives = ("test_elbo_nats", "size_bytes")

    def loss(self, model: VAE, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        return negative_elbo(model, x, config.beta)

    def validation_loss(self, model: VAE, data: DataSplits, config: TrainConfig, seed: int) -> float:
        return evaluate_elbo(model, data.validation, config.beta, seed=seed)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(VaeTask())
