"""Built-in architectures: a fully connected VAE and a convolutional VAE."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from vae_automl.components import Architecture, Param
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
        "seed_784_400_20": {"hidden_layers": 1, "hidden_width": 400, "width_decay": 1.0, "latent_dim": 20,
                            "activation": "relu", "likelihood": "bernoulli"},
    }

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        widths = [max(1, round(values["hidden_width"] * values["width_decay"] ** i))
                  for i in range(values["hidden_layers"])]
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


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    register(MLPArchitecture())
    register(ConvArchitecture())
