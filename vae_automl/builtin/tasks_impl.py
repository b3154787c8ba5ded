"""The code of the built-in ``vae`` task (:mod:`vae_automl.builtin.tasks` declares it): its loss and validation ELBO."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vae_automl.builtin.tasks import VaeTask
from vae_automl.vae import evaluate_elbo, negative_elbo

if TYPE_CHECKING:
    import torch

    from vae_automl.data import DataSplits
    from vae_automl.train import TrainConfig
    from vae_automl.vae import VAE


class VaeTaskCode(VaeTask):
    """The work of :class:`~vae_automl.builtin.tasks.VaeTask`."""

    def loss(self, model: VAE, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        return negative_elbo(model, x, config.beta)

    def validation_loss(self, model: VAE, data: DataSplits, config: TrainConfig, seed: int) -> float:
        return evaluate_elbo(model, data.validation, config.beta, seed=seed)
