"""The built-in ``classifier`` task: its architectures (LeNet-5, LeNet-300-100, the 2,464-parameter zoo CNN),
its loss (cross-entropy) and its ``test_accuracy`` objective.

All three build one module, :class:`ConvClassifier`: convolutions (each
optionally followed by 2x2 max pooling, then the activation), flattened
into fully connected layers, then a linear layer to the logits. Their
configs differ only in the lists, so distillation and pruning can scale
``conv_channels`` and ``hidden_widths`` like a VAE's widths.

- ``lenet5``: the Caffe LeNet-5 of Deep Compression (Han et al. 2016):
  conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10; 431,080 parameters
  on 28x28 images. Caffe's version has no non-linearity after the
  convolutions; this one puts the activation there too (ReLU by default).
- ``lenet_300_100``: fully connected 784-300-100-10, 266,610 parameters.
- ``zoo_cnn``: the MNIST CNN of the model zoos of Schürholt et al.
  (NeurIPS 2022 datasets track): conv 8@5x5, pool, tanh; conv 6@5x5, pool,
  tanh; conv 4@2x2, tanh; fc 20, tanh; fc 10: 2,464 parameters on 28x28
  images (the count quoted by the issue; its 3x3 description does not give
  2,464, the zoo's 5x5/5x5/2x2 kernels do).

``width`` scales every channel count and hidden width (at least 1 each):
the search can make any of them narrower or wider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from vae_automl.builtin.architectures import ACTIVATIONS
from vae_automl.classifier import Classifier, evaluate_accuracy
from vae_automl.components import Architecture, Objective, Param, Task
from vae_automl.layers import ChannelGroup
from vae_automl.plugin_manager import hookimpl

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


WIDTH = Param("width", "float", 1.0, minimum=0.05, maximum=4.0, help="multiplies every channel count and hidden width")
NUM_CLASSES = Param("num_classes", "int", 10, minimum=2, maximum=100_000, help="classes (outputs of the last layer)")


class _ClassifierArchitecture(Architecture):
    """A fixed layer plan scaled by ``width``; subclasses give the plan."""

    tasks = ("classifier",)
    conv_channels: tuple[int, ...] = ()
    conv_kernels: tuple[int, ...] = ()
    conv_pool: tuple[bool, ...] = ()
    hidden_widths: tuple[int, ...] = ()
    default_activation = "relu"

    def __init__(self) -> None:
        self.params = (
            WIDTH,
            Param(
                "activation",
                "categorical",
                self.default_activation,
                choices=tuple(ACTIVATIONS),
                help="non-linearity after every conv and hidden layer",
            ),
            NUM_CLASSES,
        )

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} needs C x H x W images, got shape {tuple(input_shape)}")

        def scaled(sizes: tuple[int, ...]) -> list[int]:
            return [max(1, round(s * values["width"])) for s in sizes]

        return {
            "architecture": self.name,
            "task": "classifier",
            "input_shape": list(input_shape),
            "num_classes": values["num_classes"],
            "conv_channels": scaled(self.conv_channels),
            "conv_kernels": list(self.conv_kernels),
            "conv_pool": list(self.conv_pool),
            "hidden_widths": scaled(self.hidden_widths),
            "activation": values["activation"],
        }

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


class LeNet5(_ClassifierArchitecture):
    name = "lenet5"
    help = "LeNet-5 (Caffe, as in Deep Compression): conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc classes"
    conv_channels, conv_kernels, conv_pool, hidden_widths = (20, 50), (5, 5), (True, True), (500,)


class LeNet300100(_ClassifierArchitecture):
    name = "lenet_300_100"
    help = "LeNet-300-100: fully connected, hidden layers of 300 and 100 units"
    hidden_widths = (300, 100)


class ZooCNN(_ClassifierArchitecture):
    name = "zoo_cnn"
    help = "the model-zoo MNIST CNN (Schürholt et al.): conv 8@5x5, 6@5x5, 4@2x2, fc 20, tanh; 2,464 parameters"
    conv_channels, conv_kernels, conv_pool, hidden_widths = (8, 6, 4), (5, 5, 2), (True, True, False), (20,)
    default_activation = "tanh"


class ClassifierTask(Task):
    name = "classifier"
    help = "an image classifier trained on cross-entropy with the dataset's labels; judged by test accuracy"
    needs_labels = True
    default_objectives = ("test_accuracy", "size_bytes")

    def loss(self, model: Any, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def validation_loss(self, model: Any, data: DataSplits, config: TrainConfig, seed: int) -> float:
        was_training = model.training
        model.eval()
        loss = float(F.cross_entropy(model(data.validation), data.validation_labels))
        model.train(was_training)
        return loss


class TestAccuracy(Objective):
    name = "test_accuracy"
    unit = "%"
    direction = "maximize"
    tasks = ("classifier",)
    needs_labels = True
    help = "top-1 accuracy on the test split, in percent"

    def measure(self, ctx: MeasureContext) -> float:
        if ctx.data.test_labels is None:
            raise ValueError("test_accuracy needs the dataset's labels, and they were not loaded")
        return evaluate_accuracy(ctx.model, ctx.data.test, ctx.data.test_labels)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(ClassifierTask())


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    register(TestAccuracy())


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    for architecture in (LeNet5(), LeNet300100(), ZooCNN()):
        register(architecture)
