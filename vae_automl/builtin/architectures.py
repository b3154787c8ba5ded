"""Built-in architectures: a fully connected VAE and a convolutional VAE."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vae_automl.base_model import BaseModelArchitecture
from vae_automl.components import Architecture, Param
from vae_automl.layers import GROUP_NAMES, ChannelGroup, LayerGroups, groups_by_prefix
from vae_automl.plugin_manager import hookimpl
from vae_automl.vae import LIKELIHOODS, VAE

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

COMMON_PARAMS = (
    Param("latent_dim", "int", 16, minimum=1, maximum=512, log=True, help="size of z"),
    Param("activation", "categorical", "relu", choices=tuple(ACTIVATIONS), help="hidden non-linearity"),
    Param("likelihood", "categorical", "bernoulli", choices=LIKELIHOODS, help="decoder distribution"),
)


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


class MLPArchitecture(Architecture):
    name = "mlp"
    help = "fully connected VAE; hidden widths shrink by width_decay per layer"
    params = (
        Param("hidden_layers", "int", 1, minimum=0, maximum=6, help="hidden layers in encoder and decoder"),
        Param("hidden_width", "int", 400, minimum=1, maximum=8192, log=True, help="width of the first hidden layer"),
        Param("width_decay", "float", 1.0, minimum=0.1, maximum=1.0, help="each next layer is this times narrower"),
        *COMMON_PARAMS,
    )
    presets = {
        # The seed documents' baseline: 784-400-20, ReLU, Bernoulli decoder.
        "seed_784_400_20": {
            "hidden_layers": 1,
            "hidden_width": 400,
            "width_decay": 1.0,
            "latent_dim": 20,
            "activation": "relu",
            "likelihood": "bernoulli",
        },
    }

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        widths = [max(1, round(values["hidden_width"] * values["width_decay"] ** i)) for i in range(values["hidden_layers"])]
        return {
            "architecture": self.name,
            "input_shape": list(input_shape),
            "encoder_widths": widths,
            "decoder_widths": list(reversed(widths)),
            "latent_dim": values["latent_dim"],
            "activation": values["activation"],
            "likelihood": values["likelihood"],
        }

    def build(self, config: dict[str, Any]) -> VAE:
        return MLPVAE(config)

    group_names = GROUP_NAMES

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


class ConvArchitecture(Architecture):
    name = "conv"
    help = "convolutional VAE; channels double per stride-2 block"
    params = (
        Param("blocks", "int", 2, minimum=1, maximum=5, help="stride-2 conv blocks"),
        Param("base_channels", "int", 32, minimum=1, maximum=512, log=True, help="channels of the first block"),
        Param("kernel_size", "categorical", 3, choices=(3, 5), help="conv kernel size"),
        *COMMON_PARAMS,
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        if "blocks" in values and isinstance(values["blocks"], int) and values["blocks"] < 1:
            raise ValueError("blocks must be at least 1")

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ValueError(f"the conv architecture needs C x H x W images, got shape {input_shape}")
        channels = [values["base_channels"] * 2**i for i in range(values["blocks"])]
        return {
            "architecture": self.name,
            "input_shape": list(input_shape),
            "encoder_channels": channels,
            "decoder_channels": list(reversed(channels)),
            "kernel_size": values["kernel_size"],
            "latent_dim": values["latent_dim"],
            "activation": values["activation"],
            "likelihood": values["likelihood"],
        }

    def build(self, config: dict[str, Any]) -> VAE:
        return ConvVAE(config)

    group_names = GROUP_NAMES

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


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    register(MLPArchitecture())
    register(ConvArchitecture())
    register(BaseModelArchitecture())
