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

The declarations (names, parameters, layer plans) import no torch; the
module, the loss and the accuracy are in
:mod:`vae_automl.builtin.classifiers_impl`, imported when a trial runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_automl.builtin.architectures import ACTIVATION_NAMES
from vae_automl.components import Architecture, Objective, Param, Task, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.classifiers_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


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
                choices=ACTIVATION_NAMES,
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

    build = implemented_in(f"{IMPL}:ClassifierCode")
    channel_groups = implemented_in(f"{IMPL}:ClassifierCode")


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
    loss = implemented_in(f"{IMPL}:ClassifierTaskCode")
    validation_loss = implemented_in(f"{IMPL}:ClassifierTaskCode")


class TestAccuracy(Objective):
    name = "test_accuracy"
    unit = "%"
    direction = "maximize"
    tasks = ("classifier",)
    needs_labels = True
    help = "top-1 accuracy on the test split, in percent"
    measure = implemented_in(f"{IMPL}:TestAccuracyCode")


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
