"""The code of the built-in ``codec`` task (:mod:`vae_automl.builtin.codec` declares it): models, losses, measurements."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vae_automl import packing
from vae_automl.builtin.architectures_impl import ACTIVATIONS
from vae_automl.builtin.codec import (
    CodecTask,
    ConvCodecArchitecture,
    DecoderBytes,
    MLPCodecArchitecture,
    PsnrDb,
    RateBytesPerImage,
    RecognitionAccuracy,
    Ssim,
)
from vae_automl.codec import CodecVAE
from vae_automl.metrics import psnr_db, ssim
from vae_automl.reference_classifier import reference_classifier

if TYPE_CHECKING:
    from vae_automl.components import MeasureContext
    from vae_automl.data import DataSplits
    from vae_automl.train import TrainConfig
    from vae_automl.vae import VAE


def _codec(model: VAE) -> CodecVAE:
    if not isinstance(model, CodecVAE):
        raise TypeError(
            f"the codec task needs a CodecVAE, got {type(model).__name__} (use an architecture whose tasks include 'codec')"
        )
    return model


class CodecTaskCode(CodecTask):
    """The work of :class:`~vae_automl.builtin.codec.CodecTask`."""

    def loss(self, model: VAE, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        return _codec(model).rd_loss(x, noise=True)

    @torch.no_grad()
    def validation_loss(self, model: VAE, data: DataSplits, config: TrainConfig, seed: int) -> float:
        codec = _codec(model)
        was_training = codec.training
        codec.eval()
        x = data.validation
        total = sum(float(codec.rd_loss(x[i : i + 2048], noise=False)) * len(x[i : i + 2048]) for i in range(0, len(x), 2048))
        codec.train(was_training)
        return total / len(x)

    def prepare(self, model: VAE, data: DataSplits) -> None:
        codec = _codec(model)
        if isinstance(codec, MLPCodec) and codec.config.get("init") == "pca":
            codec.init_from_pca(data.train)

    def finalize(self, model: VAE) -> None:
        _codec(model).build_tables()


class _Residual(nn.Module):
    """``linear(x) + mlp(x)``: a linear transform and a non-linear correction beside it."""

    def __init__(self, linear: nn.Linear, mlp: nn.Sequential) -> None:
        super().__init__()
        self.linear, self.mlp = linear, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x) + self.mlp(x)


class PostFilter(nn.Module):
    """``x + cnn(x)``: a small stack of 3x3 convolutions that corrects a decoded image (zero-initialized: the identity).

    Quantization noise on a transform-coded digit spreads over the black
    background and blurs the strokes; a few thousand shared convolution
    weights learn to undo it from 8,000 images without overfitting, where
    a per-pixel MLP of the same job overfits (see the README's codec section).
    """

    def __init__(self, channels: int, layers: int, activation: type[nn.Module], image_channels: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        width = image_channels
        for _ in range(layers - 1):
            convs += [nn.Conv2d(width, channels, 3, padding=1), activation()]
            width = channels
        last = nn.Conv2d(width, image_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*convs, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MLPCodec(CodecVAE):
    """Analysis and synthesis are each a linear map plus an MLP beside it (``widths`` hidden layers).

    With ``postfilter_layers`` > 0, the synthesis ends in a :class:`PostFilter`
    of that many 3x3 convolutions (``postfilter_channels`` wide) on the image.

    With ``init: pca`` the task's :meth:`~CodecTask.prepare` sets the linear
    maps to the training images' principal components and zeroes the MLPs'
    last layers: training starts from transform coding (the PCA baseline)
    and learns the non-linear corrections and the entropy model from there,
    which a few CPU minutes of training cannot reach from a random start.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = ACTIVATIONS[config.get("activation", "relu")]
        pixels = math.prod(self.input_shape)

        def mlp(width: int, widths: list[int], out: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Linear(width, w), act()]
                width = w
            return nn.Sequential(*layers, nn.Linear(width, out))

        self.analysis = _Residual(nn.Linear(pixels, self.latent_dim), mlp(pixels, list(config["widths"]), self.latent_dim))
        self.decoder = _Residual(
            nn.Linear(self.latent_dim, pixels), mlp(self.latent_dim, list(reversed(config["widths"])), pixels)
        )
        layers = int(config.get("postfilter_layers", 0))
        self.postfilter = (
            PostFilter(int(config.get("postfilter_channels", 32)), layers, act, self.input_shape[0]) if layers else None
        )

    def synthesis(self, z: torch.Tensor) -> torch.Tensor:
        image = self.decoder(z).view(-1, *self.input_shape)
        return image if self.postfilter is None else self.postfilter(image)

    @torch.no_grad()
    def init_from_pca(self, images: torch.Tensor) -> None:
        """Set the linear maps to the top ``latent_dim`` principal components of ``images``, the MLPs to zero.

        The gain starts at the step that high-rate theory calls optimal for
        ``lmbda`` (``step**2 = 6 / (lmbda * 255**2 * ln 2)``) and the prior at
        the logistic matching each component's spread.
        """
        x = images.flatten(1).double().cpu()
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        basis = vt[: self.latent_dim]
        if len(basis) < self.latent_dim:
            raise ValueError(f"PCA init needs at least latent_dim={self.latent_dim} training images and pixels")
        device = self.gain.device
        for lin, weight, bias in ((self.analysis.linear, basis, -(basis @ mean)), (self.decoder.linear, basis.T, mean)):
            lin.weight.copy_(weight.to(device, lin.weight.dtype))
            lin.bias.copy_(bias.to(device, lin.bias.dtype))
        for branch in (self.analysis.mlp, self.decoder.mlp):
            branch[-1].weight.zero_()
            branch[-1].bias.zero_()
        step = math.sqrt(6.0 / (self.lmbda * 255.0**2 * math.log(2)))
        self.gain.fill_(-math.log(step))
        spread = ((x - mean) @ basis.T).std(0) / step * math.sqrt(3) / math.pi
        components = self.prior.means.shape[1]
        offsets = torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)
        self.prior.means.copy_((offsets[None, :] * spread[:, None]).to(device, self.prior.means.dtype))
        self.prior.log_scales.copy_(torch.log(spread.clamp_min(0.1))[:, None].expand(-1, components).to(device))
        self.prior.logits.zero_()


class MLPCodecArchitectureCode(MLPCodecArchitecture):
    """The work of :class:`~vae_automl.builtin.codec.MLPCodecArchitecture`."""

    def build(self, config: dict[str, Any]) -> VAE:
        return MLPCodec(config)


class ConvCodec(CodecVAE):
    """Stride-2 convolutions down to a linear latent; a linear layer and stride-2 transposed convolutions back up."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = ACTIVATIONS[config.get("activation", "relu")]
        c_in, h, w = self.input_shape
        layers: list[nn.Module] = []
        channels = c_in
        for c in config["channels"]:
            layers += [nn.Conv2d(channels, c, 5, stride=2, padding=2), act()]
            channels = c
            h, w = (h + 1) // 2, (w + 1) // 2
        self.analysis = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * h * w, self.latent_dim))
        self.grid = (channels, h, w)
        self.decoder_in = nn.Linear(self.latent_dim, channels * h * w)
        layers = [act()]
        chans = list(reversed(config["channels"]))
        for c_from, c_to in zip(chans, chans[1:] + [chans[-1]]):
            layers += [nn.ConvTranspose2d(c_from, c_to, 5, stride=2, padding=2, output_padding=1), act()]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(chans[-1], c_in, 3, padding=1))

    def synthesis(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.decoder_in(z).view(-1, *self.grid))
        _, height, width = self.input_shape
        return out[:, :, :height, :width]


class ConvCodecArchitectureCode(ConvCodecArchitecture):
    """The work of :class:`~vae_automl.builtin.codec.ConvCodecArchitecture`."""

    def build(self, config: dict[str, Any]) -> VAE:
        return ConvCodec(config)


def decoded_test_images(ctx: MeasureContext) -> tuple[torch.Tensor, list[bytes]]:
    """The test images' bitstreams and the images decoded from them (cached per measurement)."""
    if "codec_decoded" not in ctx.cache:
        model = _codec(ctx.model)
        latents = model.latents(ctx.data.test.to(ctx.device))
        streams = model.encode_latents(latents)
        decoded = model.decode_latents(streams)
        ctx.cache["codec_decoded"] = (model.images_from_latents(decoded), streams)
    return ctx.cache["codec_decoded"]


class RateBytesPerImageCode(RateBytesPerImage):
    """The work of :class:`~vae_automl.builtin.codec.RateBytesPerImage`."""

    def measure(self, ctx: MeasureContext) -> float:
        _, streams = decoded_test_images(ctx)
        return float(np.mean([len(s) for s in streams]))


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to the 256 levels an 8-bit image file holds."""
    return torch.round(images.clamp(0, 1) * 255.0) / 255.0


class PsnrDbCode(PsnrDb):
    """The work of :class:`~vae_automl.builtin.codec.PsnrDb`."""

    def measure(self, ctx: MeasureContext) -> float:
        decoded, _ = decoded_test_images(ctx)
        return float(psnr_db(to_8bit(ctx.data.test.cpu()), to_8bit(decoded)).mean())


class SsimCode(Ssim):
    """The work of :class:`~vae_automl.builtin.codec.Ssim`."""

    def measure(self, ctx: MeasureContext) -> float:
        decoded, _ = decoded_test_images(ctx)
        return float(ssim(to_8bit(ctx.data.test.cpu()), to_8bit(decoded)).mean())


class DecoderBytesCode(DecoderBytes):
    """The work of :class:`~vae_automl.builtin.codec.DecoderBytes`."""

    def measure(self, ctx: MeasureContext) -> float:
        return float(len(packing.serialize_model(_codec(ctx.model).decoder_part())))


class RecognitionAccuracyCode(RecognitionAccuracy):
    """The work of :class:`~vae_automl.builtin.codec.RecognitionAccuracy`."""

    def measure(self, ctx: MeasureContext) -> float:
        if ctx.data.test_labels is None or ctx.data.train_labels is None:
            raise ValueError("recognition_accuracy needs the dataset's labels")
        classifier = reference_classifier(ctx.data.train.cpu(), ctx.data.train_labels.cpu())
        decoded, _ = decoded_test_images(ctx)
        return classifier.accuracy(to_8bit(decoded), ctx.data.test_labels.cpu())
