"""Built-in architectures: a fully connected VAE and a convolutional VAE (declarations).

What ``vae-automl plugins`` lists and the YAML loader checks (names,
parameters, presets, the config each parameter set gives) is here and
imports no torch; the models and their layer and channel groups are in
:mod:`vae_automl.builtin.architectures_impl`, imported when a trial builds one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vae_automl.components import GROUP_NAMES, Architecture, Param, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

ACTIVATION_NAMES: tuple[str, ...] = ("relu", "gelu", "silu", "tanh", "elu", "leaky_relu")
"""The ``activation`` choices; ``architectures_impl.ACTIVATIONS`` maps each to its torch module (a test keeps them equal)."""
LIKELIHOOD_NAMES: tuple[str, ...] = ("bernoulli", "gaussian")
"""The ``likelihood`` choices, as :data:`vae_automl.vae.LIKELIHOODS` (a test keeps them equal)."""
IMPL = "vae_automl.builtin.architectures_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


COMMON_PARAMS = (
    Param("latent_dim", "int", 16, minimum=1, maximum=512, log=True, help="size of z"),
    Param("activation", "categorical", "relu", choices=ACTIVATION_NAMES, help="hidden non-linearity"),
    Param("likelihood", "categorical", "bernoulli", choices=LIKELIHOOD_NAMES, help="decoder distribution"),
)


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
    group_names = GROUP_NAMES

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

    build = implemented_in(f"{IMPL}:MLPCode")
    layer_groups = implemented_in(f"{IMPL}:MLPCode")
    channel_groups = implemented_in(f"{IMPL}:MLPCode")


class ConvArchitecture(Architecture):
    name = "conv"
    help = "convolutional VAE; channels double per stride-2 block"
    params = (
        Param("blocks", "int", 2, minimum=1, maximum=5, help="stride-2 conv blocks"),
        Param("base_channels", "int", 32, minimum=1, maximum=512, log=True, help="channels of the first block"),
        Param("kernel_size", "categorical", 3, choices=(3, 5), help="conv kernel size"),
        *COMMON_PARAMS,
    )
    group_names = GROUP_NAMES

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

    build = implemented_in(f"{IMPL}:ConvCode")
    layer_groups = implemented_in(f"{IMPL}:ConvCode")
    channel_groups = implemented_in(f"{IMPL}:ConvCode")


class UserModelArchitecture(Architecture):
    """The declaration of :class:`vae_automl.base_model.BaseModelArchitecture`, whose methods run (a test keeps the two equal)."""

    name = "base_model"
    help = "a user's own trained VAE given as base_model: (factory + checkpoint); see docs/bring-your-own-model.md"
    group_names = GROUP_NAMES
    config_from_params = implemented_in("vae_automl.base_model:BaseModelArchitecture")
    build = implemented_in("vae_automl.base_model:BaseModelArchitecture")
    layer_groups = implemented_in("vae_automl.base_model:BaseModelArchitecture")
    channel_groups = implemented_in("vae_automl.base_model:BaseModelArchitecture")


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    register(MLPArchitecture())
    register(ConvArchitecture())
    register(UserModelArchitecture())
