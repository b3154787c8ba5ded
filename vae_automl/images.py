"""Image arrays brought to the size and colour a search space asks for (``dataset.image_size``, ``dataset.color``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vae_automl.errors import DataError

COLORS = ("grey", "rgb")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R 601-2 luma weights: the ones Pillow's ``convert("L")`` uses, so both paths give the same grey."""


def check_image_size(value: object) -> tuple[int, int]:
    """``28`` -> ``(28, 28)``; ``[H, W]`` -> ``(H, W)``; ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"image_size must be a positive int or [height, width], but got {value!r}")
    return int(value[0]), int(value[1])


def convert_color(images: np.ndarray, color: str | None, source: str) -> np.ndarray:
    """float N x C x H x W with C in 1, 3, 4 -> C = 1 (``grey``) or 3 (``rgb``); alpha is dropped; None keeps C."""
    if color is None:
        return images
    if color not in COLORS:
        raise DataError(f"{source}: color must be one of {', '.join(COLORS)}, but got {color!r}")
    channels = images.shape[1]
    if channels not in (1, 3, 4):
        raise DataError(f"{source}: cannot convert images of {channels} channels to {color}")
    if channels == 4:
        images = images[:, :3]
    if color == "grey":
        if images.shape[1] == 1:
            return images
        return np.einsum("nchw,c->nhw", images, LUMA)[:, None].astype(np.float32)
    return images if images.shape[1] == 3 else np.repeat(images, 3, axis=1)


def resize(images: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """float N x C x H x W -> N x C x image_size, bilinear with antialiasing (as Pillow's resize does)."""
    if image_size is None or tuple(images.shape[2:]) == tuple(image_size):
        return images
    # deferred: torch is needed only when a dataset is resized
    import torch
    from torch.nn import functional as F

    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(images)), size=image_size, mode="bilinear", antialias=True)
    return out.clamp_(0.0, 1.0).numpy()


def reshape_images(images: np.ndarray, image_size: tuple[int, int] | None, color: str | None, source: str) -> np.ndarray:
    """float N x C x H x W in [0, 1] at ``image_size`` and in ``color`` (None keeps what the dataset has)."""
    return resize(convert_color(images, color, source), image_size)
