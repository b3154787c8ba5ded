"""The VAE interface every architecture implements, and the ELBO."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2 * math.pi)


class VAE(nn.Module):
    """A VAE: ``encode(x) -> (mu, logvar)``, ``decode(z) -> decoder output``.

    The decoder output is Bernoulli logits, or for the Gaussian likelihood the
    mean (a per-pixel learned ``log_sigma`` parameter gives the scale).

    ``config`` is the canonical, JSON-serializable description that
    ``Architecture.build`` turns back into this model (structured pruning
    updates it as it shrinks layers). ``encodings`` maps a parameter name to
    how the packer stores it (missing: dense float32); compressors fill it.
    """

    config: dict[str, Any]
    encodings: dict[str, dict[str, Any]]
    container: str = "safetensors"
    """The file the packer writes: ``"safetensors"`` or ``"compact"`` (see :mod:`vae_automl.storage.compact`)."""
    compact_version: int | None = None
    """The compact container's version of the file this model was loaded from, written again on saving (None: the current)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.encodings = {}
        self.likelihood = config.get("likelihood", "bernoulli")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, but got {self.likelihood!r}")
        self.input_shape: tuple[int, ...] = tuple(config["input_shape"])
        self.latent_dim: int = int(config["latent_dim"])
        if self.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.full(self.input_shape, -2.0))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample ``z = mu + sigma * eps`` (``eps`` drawn if not given), decode."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar

    def mean_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoder's expected image in [0, 1]."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(decoded)
        return decoded.clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        mu, _ = self.encode(x)
        return self.mean_image(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images decoded from the prior."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.mean_image(self.decode(z))


def reconstruction_nll(model: VAE, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image negative log-likelihood of ``x`` under the decoder, in nats."""
    if model.likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(decoded, x, reduction="none")
    else:
        log_sigma = model.log_sigma
        nll = 0.5 * LOG_2PI + log_sigma + 0.5 * ((x - decoded) * torch.exp(-log_sigma)) ** 2
    return nll.flatten(1).sum(1)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-image KL(q(z|x) || N(0, I)), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def negative_elbo(model: VAE, x: torch.Tensor, beta: float = 1.0, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of the negative (beta-)ELBO, in nats per image."""
    decoded, mu, logvar = model(x, eps)
    return (reconstruction_nll(model, decoded, x) + beta * kl_to_prior(mu, logvar)).mean()


@torch.no_grad()
def evaluate_elbo(model: VAE, x: torch.Tensor, beta: float = 1.0, seed: int = 0, chunk: int = 2048) -> float:
    """Negative ELBO in nats per image over ``x``, with noise fixed by ``seed`` (repeatable)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        eps = torch.randn(len(xb), model.latent_dim, generator=generator, device=x.device)
        decoded, mu, logvar = model(xb, eps)
        total += float((reconstruction_nll(model, decoded, xb) + beta * kl_to_prior(mu, logvar)).sum())
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def evaluate_recon_error(model: VAE, x: torch.Tensor, chunk: int = 2048) -> float:
    """Mean per-pixel binary cross-entropy of the reconstruction through the posterior mean."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        recon = model.reconstruct(xb).clamp(1e-7, 1 - 1e-7)
        total += float(torch.nn.functional.binary_cross_entropy(recon, xb, reduction="sum"))
    model.train(was_training)
    return total / x.numel()
