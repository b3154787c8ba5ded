"""The classifier interface (the model of the ``classifier`` task), its loss, accuracy and logit distillation.

A classifier is a plain ``nn.Module`` mapping images ``N x C x H x W`` to
class logits ``N x num_classes``. Like :class:`vae_automl.vae.VAE` it
carries ``config`` (the canonical, JSON-serializable description its
architecture builds it from) and ``encodings`` (how the packer stores each
tensor), so storage, compressors and export treat both alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class Classifier(nn.Module):
    """An image classifier: ``forward(x) -> logits``; ``config`` and ``encodings`` as on a VAE."""

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
        self.input_shape: tuple[int, ...] = tuple(config["input_shape"])
        self.num_classes: int = int(config["num_classes"])
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, but got {self.num_classes}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class of each image."""
        return self(x).argmax(1)


def cross_entropy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labels ``y`` under the model's logits, in nats per image."""
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy_of(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    """Top-1 accuracy in percent (0..100) of any ``x -> logits`` callable (a model, an ONNX session, TorchScript)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    correct = 0
    for start in range(0, len(x), chunk):
        logits = logits_of(x[start : start + chunk])
        correct += int((logits.argmax(1).to(y.device) == y[start : start + chunk]).sum())
    return 100.0 * correct / len(x)


def evaluate_accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    """Top-1 accuracy of ``model`` (in eval mode; its mode is restored) over ``x``, in percent."""
    was_training = model.training
    model.eval()
    try:
        return accuracy_of(model, x, y, chunk)
    finally:
        model.train(was_training)


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T**2 * KL(softmax(t/T) || softmax(s/T))``, mean over the batch, in nats.

    The ``T**2`` keeps the gradient scale independent of the temperature, so
    the weight of this term means the same at every ``T``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, but got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return temperature**2 * kl.mean()
