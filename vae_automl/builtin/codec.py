"""The built-in ``codec`` task: its architectures (MLP, conv) and objectives (rate, PSNR, SSIM, decoder bytes, recognition).

The declarations import no torch; the models, the losses and the measurements are in
:mod:`vae_automl.builtin.codec_impl`, imported when a trial runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_automl.builtin.architectures import ACTIVATION_NAMES
from vae_automl.components import Architecture, Objective, Param, Task, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.codec_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


class CodecTask(Task):
    name = "codec"
    help = "a VAE whose rounded latent is range-coded under a learned prior; loss bits/pixel + lmbda*255^2*MSE"
    default_objectives = ("rate_bytes_per_image", "psnr_db", "decoder_bytes")
    loss = implemented_in(f"{IMPL}:CodecTaskCode")
    validation_loss = implemented_in(f"{IMPL}:CodecTaskCode")
    prepare = implemented_in(f"{IMPL}:CodecTaskCode")
    finalize = implemented_in(f"{IMPL}:CodecTaskCode")


CODEC_PARAMS = (
    Param("latent_dim", "int", 32, minimum=1, maximum=512, log=True, help="size of the coded latent"),
    Param(
        "lmbda",
        "float",
        0.01,
        minimum=1e-5,
        maximum=10.0,
        log=True,
        help="rate-distortion trade-off: loss = bits/pixel + lmbda * 255^2 * MSE",
    ),
    Param("prior_components", "int", 3, minimum=1, maximum=8, help="logistics per latent dimension in the prior"),
    Param("activation", "categorical", "relu", choices=ACTIVATION_NAMES, help="hidden non-linearity"),
)


class MLPCodecArchitecture(Architecture):
    name = "codec_mlp"
    help = "fully connected codec (linear maps + MLPs, PCA-initialized): a range-coded latent under a learned prior"
    tasks = ("codec",)
    params = (
        Param("hidden_layers", "int", 2, minimum=0, maximum=4, help="hidden layers in analysis and synthesis"),
        Param("hidden_width", "int", 512, minimum=8, maximum=4096, log=True, help="width of the widest hidden layer"),
        Param("width_decay", "float", 1.0, minimum=0.1, maximum=1.0, help="each deeper layer is this times narrower"),
        Param("postfilter_layers", "int", 0, minimum=0, maximum=8, help="3x3 conv layers correcting the decoded image (0: none)"),
        Param(
            "postfilter_channels", "int", 32, minimum=1, maximum=256, log=True, help="channels of the post-filter's convolutions"
        ),
        Param(
            "init",
            "categorical",
            "pca",
            choices=("pca", "random"),
            help="pca: start the linear maps at the training images' principal components",
        ),
        *CODEC_PARAMS,
    )

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        widths = [max(1, round(values["hidden_width"] * values["width_decay"] ** i)) for i in range(values["hidden_layers"])]
        return {
            "architecture": self.name,
            "input_shape": list(input_shape),
            "widths": widths,
            **{k: values[k] for k in ("latent_dim", "lmbda", "prior_components", "activation", "init")},
            **({k: values[k] for k in ("postfilter_layers", "postfilter_channels")} if values["postfilter_layers"] else {}),
        }

    build = implemented_in(f"{IMPL}:MLPCodecArchitectureCode")


class ConvCodecArchitecture(Architecture):
    name = "codec_conv"
    help = "convolutional codec: a quantized, range-coded latent under a learned factorized prior"
    tasks = ("codec",)
    params = (
        Param("blocks", "int", 2, minimum=1, maximum=4, help="stride-2 conv blocks"),
        Param("base_channels", "int", 32, minimum=1, maximum=256, log=True, help="channels of the first block (doubling)"),
        *CODEC_PARAMS,
    )

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ValueError(f"the conv codec needs C x H x W images, got shape {input_shape}")
        channels = [values["base_channels"] * 2**i for i in range(values["blocks"])]
        return {
            "architecture": self.name,
            "input_shape": list(input_shape),
            "channels": channels,
            **{k: values[k] for k in ("latent_dim", "lmbda", "prior_components", "activation")},
        }

    build = implemented_in(f"{IMPL}:ConvCodecArchitectureCode")


class RateBytesPerImage(Objective):
    name = "rate_bytes_per_image"
    unit = "bytes/image"
    tasks = ("codec",)
    help = "mean length of the standalone per-image bitstreams of the test images (header byte included)"
    measure = implemented_in(f"{IMPL}:RateBytesPerImageCode")


class PsnrDb(Objective):
    name = "psnr_db"
    unit = "dB"
    direction = "maximize"
    tasks = ("codec",)
    help = "PSNR of each decoded test image (8-bit levels, peak 1.0), averaged over the images"
    measure = implemented_in(f"{IMPL}:PsnrDbCode")


class Ssim(Objective):
    name = "ssim"
    unit = ""
    direction = "maximize"
    tasks = ("codec",)
    help = "SSIM with a 7x7 uniform window of each decoded test image, averaged"
    measure = implemented_in(f"{IMPL}:SsimCode")


class DecoderBytes(Objective):
    name = "decoder_bytes"
    unit = "bytes"
    tasks = ("codec",)
    help = "bytes of the packed decoder (synthesis weights in their encodings, and the frequency tables)"
    measure = implemented_in(f"{IMPL}:DecoderBytesCode")


class RecognitionAccuracy(Objective):
    name = "recognition_accuracy"
    unit = "fraction"
    direction = "maximize"
    tasks = ("codec",)
    needs_labels = True
    help = "accuracy of the fixed reference classifier (trained on the training split) on the decoded test images"
    measure = implemented_in(f"{IMPL}:RecognitionAccuracyCode")


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(CodecTask())


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    register(MLPCodecArchitecture())
    register(ConvCodecArchitecture())


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    for objective in (RateBytesPerImage(), PsnrDb(), Ssim(), DecoderBytes(), RecognitionAccuracy()):
        register(objective)
