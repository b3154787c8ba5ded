"""A fixed reference classifier: trained deterministically on the training split, it judges decoded images.

``recognition_accuracy`` asks whether a codec keeps the content: the same
classifier reads the originals and the decoded images. It is a small MLP
(pixels -> 256 -> classes) trained on one CPU thread with a fixed seed
and schedule, so the same images and labels give the same classifier in
every process; it is cached per process by the sha256 of its data.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SEED = 0
EPOCHS = 15
BATCH_SIZE = 64
HIDDEN = 256

_cache: dict[str, ReferenceClassifier] = {}


class ReferenceClassifier:
    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float().flatten(1)).argmax(1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of ``images`` classified as ``labels``."""
        return float((self.predict(images) == labels).double().mean())


def _train(images: torch.Tensor, labels: torch.Tensor) -> ReferenceClassifier:
    generator = torch.Generator().manual_seed(SEED)
    x, y = images.float().flatten(1), labels.long()
    classes = int(y.max()) + 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a sum's order, and so the weights, depend on the thread count
    try:
        net = nn.Sequential(nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, classes))
        with torch.no_grad():
            for p in net.parameters():
                p.uniform_(-1.0, 1.0, generator=generator).mul_(1.0 / p.shape[-1] ** 0.5)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), BATCH_SIZE):
                idx = order[start : start + BATCH_SIZE]
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return ReferenceClassifier(net)


def reference_classifier(images: torch.Tensor, labels: torch.Tensor) -> ReferenceClassifier:
    """The reference classifier of a training set ``images`` (``N x ...`` in [0, 1]) with integer ``labels``."""
    digest = hashlib.sha256(images.float().cpu().numpy().tobytes() + labels.long().cpu().numpy().tobytes()).hexdigest()
    if digest not in _cache:
        _cache[digest] = _train(images.cpu(), labels.cpu())
    return _cache[digest]
