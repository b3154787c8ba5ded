"""The code of the built-in architectures (:mod:`vae_automl.builtin.architectures` declares them): the models, their groups."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vae_automl.builtin.architectures import ConvArchitecture, MLPArchitecture
from vae_automl.layers import ChannelGroup, LayerGroups, groups_by_prefix
from vae_automl.vae import VAE

if TYPE_CHECKING:
    from collections.abc import Callable

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def _latent_group(model: VAE, consumer: tuple[str, int, int]) -> ChannelGroup:
    """The latent units: rows of both heads and the decoder input's columns."""
    return ChannelGroup(
        "latent_dim",
        -1,
        model.latent_dim,
        ("mu.weight", 0),
        (("mu.weight", 0, 1), ("mu.bias", 0, 1), ("logvar.weight", 0, 1), ("logvar.bias", 0, 1), consumer),
        "mu",
    )


class MLPVAE(VAE):
    """Encoder ``D -> widths -> (mu, logvar)``, decoder ``z -> widths -> D``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = ACTIVATIONS[config.get("activation", "relu")]
        in_features = math.prod(self.input_shape)
        layers: list[nn.Module] = []
        width = in_features
        for w in config["encoder_widths"]:
            layers += [nn.Linear(width, w), act()]
            width = w
        self.encoder = nn.Sequential(*layers)
        self.mu = nn.Linear(width, self.latent_dim)
        self.logvar = nn.Linear(width, self.latent_dim)
        layers = []
        width = self.latent_dim
        for w in config["decoder_widths"]:
            layers += [nn.Linear(width, w), act()]
            width = w
        layers.append(nn.Linear(width, in_features))
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)


class MLPCode(MLPArchitecture):
    """The work of :class:`~vae_automl.builtin.architectures.MLPArchitecture`."""

    def build(self, config: dict[str, Any]) -> VAE:
        return MLPVAE(config)

    def layer_groups(self, model: VAE) -> LayerGroups:
        return groups_by_prefix(model, {"encoder": ("encoder",), "heads": ("mu", "logvar"), "decoder": ("decoder",)})

    def channel_groups(self, model: VAE, include_latent: bool = False) -> list[ChannelGroup]:
        # encoder = [Linear, act] * n; decoder = [Linear, act] * n + [Linear]: Linear i sits at index 2 * i.
        config = model.config
        enc, dec = list(config["encoder_widths"]), list(config["decoder_widths"])
        groups: list[ChannelGroup] = []
        for i, width in enumerate(enc):
            consumers = (
                [(f"encoder.{2 * i + 2}.weight", 1, 1)] if i + 1 < len(enc) else [("mu.weight", 1, 1), ("logvar.weight", 1, 1)]
            )
            groups.append(
                ChannelGroup(
                    "encoder_widths",
                    i,
                    width,
                    (f"encoder.{2 * i}.weight", 0),
                    ((f"encoder.{2 * i}.weight", 0, 1), (f"encoder.{2 * i}.bias", 0, 1), *consumers),
                    f"encoder.{2 * i + 1}",
                )
            )
        for j, width in enumerate(dec):
            groups.append(
                ChannelGroup(
                    "decoder_widths",
                    j,
                    width,
                    (f"decoder.{2 * j}.weight", 0),
                    ((f"decoder.{2 * j}.weight", 0, 1), (f"decoder.{2 * j}.bias", 0, 1), (f"decoder.{2 * j + 2}.weight", 1, 1)),
                    f"decoder.{2 * j + 1}",
                )
            )
        if include_latent:
            groups.append(_latent_group(model, ("decoder.0.weight", 1, 1)))
        return groups


class ConvVAE(VAE):
    """Stride-2 conv blocks down, a linear bottleneck, stride-2 transposed conv blocks up."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = ACTIVATIONS[config.get("activation", "relu")]
        k = int(config["kernel_size"])
        c_in, h, w = self.input_shape
        layers: list[nn.Module] = []
        channels = c_in
        for c in config["encoder_channels"]:
            layers += [nn.Conv2d(channels, c, k, stride=2, padding=k // 2), act()]
            channels = c
            h, w = (h + 1) // 2, (w + 1) // 2
        self.encoder = nn.Sequential(*layers)
        self.bottleneck_shape = (channels, h, w)
        flat = channels * h * w
        self.mu = nn.Linear(flat, self.latent_dim)
        self.logvar = nn.Linear(flat, self.latent_dim)
        dec_channels = list(config["decoder_channels"])
        self.decoder_in = nn.Linear(self.latent_dim, dec_channels[0] * h * w)
        self.decoder_in_shape = (dec_channels[0], h, w)
        layers = [act()]
        for c_from, c_to in zip(dec_channels, dec_channels[1:] + [dec_channels[-1]]):
            layers += [nn.ConvTranspose2d(c_from, c_to, k, stride=2, padding=k // 2, output_padding=1), act()]
        self.decoder = nn.Sequential(*layers)
        self.decoder_out = nn.Conv2d(dec_channels[-1], c_in, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder(self.decoder_in(z).view(-1, *self.decoder_in_shape))
        _, height, width = self.input_shape
        # Upsampling by 2 per block overshoots odd sizes (28 -> 7 -> 4 -> 32); crop back.
        return self.decoder_out(h)[:, :, :height, :width]


class ConvCode(ConvArchitecture):
    """The work of :class:`~vae_automl.builtin.architectures.ConvArchitecture`."""

    def build(self, config: dict[str, Any]) -> VAE:
        return ConvVAE(config)

    def layer_groups(self, model: VAE) -> LayerGroups:
        return groups_by_prefix(
            model, {"encoder": ("encoder",), "heads": ("mu", "logvar"), "decoder": ("decoder_in", "decoder", "decoder_out")}
        )

    def channel_groups(self, model: VAE, include_latent: bool = False) -> list[ChannelGroup]:
        config = model.config
        enc, dec = list(config["encoder_channels"]), list(config["decoder_channels"])
        _, h, w = model.bottleneck_shape
        hw = h * w
        groups: list[ChannelGroup] = []
        for i, channels in enumerate(enc):
            consumers = (
                [(f"encoder.{2 * i + 2}.weight", 1, 1)] if i + 1 < len(enc) else [("mu.weight", 1, hw), ("logvar.weight", 1, hw)]
            )
            groups.append(
                ChannelGroup(
                    "encoder_channels",
                    i,
                    channels,
                    (f"encoder.{2 * i}.weight", 0),
                    ((f"encoder.{2 * i}.weight", 0, 1), (f"encoder.{2 * i}.bias", 0, 1), *consumers),
                    f"encoder.{2 * i + 1}",
                )
            )
        # decoder = [act0, convT0, act1, convT1, ..., convT_{n-1}, act_n]; ConvTranspose2d weights are in x out.
        groups.append(
            ChannelGroup(
                "decoder_channels",
                0,
                dec[0],
                ("decoder_in.weight", 0),
                (("decoder_in.weight", 0, hw), ("decoder_in.bias", 0, hw), ("decoder.1.weight", 0, 1)),
                "decoder.0",
            )
        )
        n = len(dec)
        for j in range(1, n + 1):
            last = j == n
            consumer = ("decoder_out.weight", 1, 1) if last else (f"decoder.{2 * j + 1}.weight", 0, 1)
            groups.append(
                ChannelGroup(
                    None if last else "decoder_channels",
                    j,
                    dec[min(j, n - 1)],
                    (f"decoder.{2 * j - 1}.weight", 1),
                    ((f"decoder.{2 * j - 1}.weight", 1, 1), (f"decoder.{2 * j - 1}.bias", 0, 1), consumer),
                    f"decoder.{2 * j}",
                    # The last transposed conv keeps its input's channel count (config has one value).
                    tied_to=len(groups) - 1 if last else None,
                )
            )
        if include_latent:
            groups.append(_latent_group(model, ("decoder_in.weight", 1, 1)))
        return groups
