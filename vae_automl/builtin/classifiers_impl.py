"""The code of the built-in classifier task (:mod:`vae_automl.builtin.classifiers` declares it): the module, loss, accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from vae_automl.builtin.architectures_impl import ACTIVATIONS
from vae_automl.builtin.classifiers import ClassifierTask, TestAccuracy, _ClassifierArchitecture
from vae_automl.classifier import Classifier, evaluate_accuracy
from vae_automl.layers import ChannelGroup

if TYPE_CHECKING:
    from vae_automl.components import MeasureContext
    from vae_automl.data import DataSplits
    from vae_automl.train import TrainConfig


class ConvClassifier(Classifier):
    """``features`` (conv [pool] act ...) -> flatten -> ``head`` (linear act ... linear)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = ACTIVATIONS[config.get("activation", "relu")]
        channels, kernels, pools = config["conv_channels"], config["conv_kernels"], config["conv_pool"]
        if not len(channels) == len(kernels) == len(pools):
            raise ValueError(
                f"conv_channels, conv_kernels and conv_pool must have one entry per conv layer, "
                f"got {len(channels)}, {len(kernels)}, {len(pools)}"
            )
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        self.conv_at: list[tuple[int, int]] = []
        """``(conv index, activation index)`` in ``features`` of each convolution."""
        for out_c, k, pool in zip(channels, kernels, pools):
            conv_index = len(layers)
            layers.append(nn.Conv2d(c, out_c, k))
            h, w = h - k + 1, w - k + 1
            if pool:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            self.conv_at.append((conv_index, len(layers)))
            layers.append(act())
            c = out_c
            if h < 1 or w < 1:
                raise ValueError(f"images of shape {self.input_shape} are too small for convolutions {kernels}")
        self.features = nn.Sequential(*layers)
        self.feature_shape = (c, h, w)
        width = c * h * w
        layers = []
        for hidden in config["hidden_widths"]:
            layers += [nn.Linear(width, hidden), act()]
            width = hidden
        layers.append(nn.Linear(width, self.num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ClassifierCode(_ClassifierArchitecture):
    """The work of the classifier architectures."""

    def build(self, config: dict[str, Any]) -> ConvClassifier:  # type: ignore[override]
        return ConvClassifier(config)

    def channel_groups(self, model: Any, include_latent: bool = False) -> list[ChannelGroup]:
        # features = [conv, (pool), act] per conv; head = [Linear, act] per hidden layer + [Linear].
        if include_latent:
            raise ValueError(f"{self.name} is a classifier: it has no latent units")
        _, h, w = model.feature_shape
        groups: list[ChannelGroup] = []
        convs = model.conv_at
        for i, (conv, act) in enumerate(convs):
            consumer = (f"features.{convs[i + 1][0]}.weight", 1, 1) if i + 1 < len(convs) else ("head.0.weight", 1, h * w)
            name = f"features.{conv}"
            groups.append(
                ChannelGroup(
                    "conv_channels",
                    i,
                    model.config["conv_channels"][i],
                    (f"{name}.weight", 0),
                    ((f"{name}.weight", 0, 1), (f"{name}.bias", 0, 1), consumer),
                    f"features.{act}",
                )
            )
        for j, width in enumerate(model.config["hidden_widths"]):
            name = f"head.{2 * j}"
            groups.append(
                ChannelGroup(
                    "hidden_widths",
                    j,
                    width,
                    (f"{name}.weight", 0),
                    ((f"{name}.weight", 0, 1), (f"{name}.bias", 0, 1), (f"head.{2 * j + 2}.weight", 1, 1)),
                    f"head.{2 * j + 1}",
                )
            )
        return groups


class ClassifierTaskCode(ClassifierTask):
    """The work of :class:`~vae_automl.builtin.classifiers.ClassifierTask`."""

    def loss(self, model: Any, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def validation_loss(self, model: Any, data: DataSplits, config: TrainConfig, seed: int) -> float:
        was_training = model.training
        model.eval()
        loss = float(F.cross_entropy(model(data.validation), data.validation_labels))
        model.train(was_training)
        return loss


class TestAccuracyCode(TestAccuracy):
    """The work of :class:`~vae_automl.builtin.classifiers.TestAccuracy`."""

    def measure(self, ctx: MeasureContext) -> float:
        if ctx.data.test_labels is None:
            raise ValueError("test_accuracy needs the dataset's labels, and they were not loaded")
        return evaluate_accuracy(ctx.model, ctx.data.test, ctx.data.test_labels)
