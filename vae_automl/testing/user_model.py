"""A VAE as a user writes it, without vae-automl: the contract suites' ``base_model:`` case.

A small conv VAE whose ``decode`` hard-codes its reshape (``view(-1, 2 *
width, cells, cells)``), as user code does; it follows the model protocol
of docs/bring-your-own-model.md and nothing else. Its factory is
``vae_automl.testing.user_model:build``.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallConvVAE(nn.Module):
    """Two stride-2 convs, linear heads, a linear layer reshaped by a fixed ``view``, two transposed convs."""

    def __init__(self, latent: int = 4, width: int = 4, size: int = 8) -> None:
        super().__init__()
        self.width, self.cells = width, size // 4
        flat = 2 * width * self.cells * self.cells
        self.enc = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), nn.Flatten()
        )
        self.fc_mu, self.fc_logvar = nn.Linear(flat, latent), nn.Linear(flat, latent)
        self.fc_dec = nn.Linear(latent, flat)
        self.dec = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, 1, 4, 2, 1)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(self.fc_dec(z).view(-1, 2 * self.width, self.cells, self.cells))


def build(latent: int = 4, width: int = 4, size: int = 8) -> SmallConvVAE:
    """The factory a ``base_model:`` names: ``vae_automl.testing.user_model:build``."""
    return SmallConvVAE(latent, width, size)
