"""Datasets -> device-resident tensors, split by seed into train / validation / test."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vae_automl.errors import DataError
from vae_automl.images import reshape_images
from vae_automl.registry import get_registry

if TYPE_CHECKING:
    import torch

    from vae_automl.registry import Registry

DATA_DIR_ENV = "VAE_AUTOML_DATA_DIR"
MIN_SIDE_PX = 2
"""Images smaller than this in height or width are refused: a 1-pixel side is a mis-shaped array, not an image."""
MIN_TRAIN_IMAGES = 8
"""A split that leaves fewer training images is refused: no model learns anything from fewer."""


@dataclass(frozen=True)
class SplitConfig:
    """How images are split. A value below 1 is a fraction, 1 or more a count of images.

    With ``shuffle: false`` the order of the file is kept: the test split is
    the last images, the validation split the ones before it (the benchmark
    convention "train on the first 8,000 MNIST test images, test on the last
    2,000" is ``{test: 2000, validation: 0, shuffle: false}``).
    """

    validation: float = 0.1
    test: float = 0.2
    seed: int = 0
    shuffle: bool = True
    limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("validation", "test"):
            value = getattr(self, key)
            if value < 0:
                raise ValueError(f"{key} must be >= 0, but got {value}")
        if self.limit is not None and self.limit < 3:
            raise ValueError(f"limit must be at least 3 images, but got {self.limit}")


@dataclass
class DataSplits:
    """Images as float tensors in [0, 1], shape N x C x H x W, on ``device``.

    The ``*_labels`` (int64, one per image) are set only when a task or an
    objective needs them and the dataset has them. Numpy arrays instead of
    tensors where :func:`make_splits` got no device (a torch-free trial).
    """

    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    info: dict[str, Any]
    train_labels: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def to(self, device: torch.device | str) -> DataSplits:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return DataSplits(
            self.train.to(device),
            self.validation.to(device),
            self.test.to(device),
            dict(self.info),
            move(self.train_labels),
            move(self.validation_labels),
            move(self.test_labels),
        )


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"npz:/x.npz#key"`` -> ``("npz", "/x.npz#key")``; ``"digits"`` -> ``("digits", None)``."""
    name, sep, arg = spec.partition(":")
    if not name:
        raise DataError(f"dataset spec {spec!r} has no name before ':'")
    return name, (arg if sep else None)


def to_unit_float(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 or [0, 1] float images -> float32 N x C x H x W in [0, 1]."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"{source}: expected images N x H x W or N x C x H x W, got shape {images.shape}")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        # channels-last arrays (PIL, TensorFlow) would otherwise train as W channels of H x C images
        raise DataError(
            f"{source}: images of shape {images.shape} look channels-last (N x H x W x C); vae-automl reads "
            "N x C x H x W: store np.transpose(images, (0, 3, 1, 2))"
        )
    if len(images) == 0:
        raise DataError(f"{source}: holds no images")
    if images.shape[1] == 0:
        raise DataError(f"{source}: images of shape {images.shape} have no channels (N x C x H x W with C = 0)")
    if min(images.shape[2:]) < MIN_SIDE_PX:
        raise DataError(
            f"{source}: images of {images.shape[2]}x{images.shape[3]} pixels (array shape {images.shape}); at least "
            f"{MIN_SIDE_PX}x{MIN_SIDE_PX} are needed: is the array N x C x H x W?"
        )
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise DataError(f"{source}: images must be uint8 or float, got dtype {images.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        images = images.astype(np.float32)
    finite = np.isfinite(images)
    if not finite.all():
        # a min/max check is fooled by NaN, and every trial would then fail with a "diverged" loss
        bad = np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))
        raise DataError(
            f"{source}: {int((~finite).sum())} pixel values are NaN or infinite, in {len(bad)} images "
            f"(first: image {int(bad[0])}); remove or repair those images"
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{source}: images must be uint8 or floats in [0, 1], got values in [{low}, {high}]")
    return images


_image_cache: dict[tuple[Any, ...], np.ndarray] = {}


def load_images(
    spec: str,
    data_dir: str | None = None,
    download: bool = False,
    registry: Registry | None = None,
    image_size: tuple[int, int] | None = None,
    color: str | None = None,
) -> np.ndarray:
    """Every image of a dataset as float32 N x C x H x W in [0, 1], cached per process.

    ``image_size`` (height, width) and ``color`` (``grey`` or ``rgb``) resize and convert them, as the YAML's
    ``dataset.image_size`` and ``dataset.color`` ask; None keeps the dataset's own.
    """

    registry = registry or get_registry()
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    name, arg = parse_spec(spec)
    try:
        dataset = registry.datasets.get(name)
    except Exception as exc:
        raise DataError(str(exc)) from None
    key = (type(dataset).__qualname__, spec, data_dir, download, image_size, color)
    if key not in _image_cache:
        source = f"dataset {spec!r}"
        shaped = dataset.load_resized(arg, data_dir, download, image_size, color) if image_size or color else None
        if shaped is not None:
            images = to_unit_float(np.asarray(shaped), source)
        else:
            images = to_unit_float(np.asarray(dataset.load(arg, data_dir, download)), source)
            images = reshape_images(images, image_size, color, source)
        images.setflags(write=False)
        _image_cache[key] = images
    return _image_cache[key]


def load_labels(
    spec: str, n_images: int, data_dir: str | None = None, download: bool = False, registry: Registry | None = None
) -> np.ndarray:
    """Every label of a dataset as int64, one per image of :func:`load_images`; DataError if it has none."""

    registry = registry or get_registry()
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    name, arg = parse_spec(spec)
    labels = registry.datasets.get(name).load_labels(arg, data_dir, download)
    if labels is None:
        raise DataError(f"dataset {spec!r} has no labels, but the task or an objective needs them")
    labels = np.asarray(labels)
    if labels.shape != (n_images,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"dataset {spec!r}: expected {n_images} integer labels, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def split_indices(n: int, split: SplitConfig, source: str = "dataset") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices of ``n`` images; DataError naming ``source`` and the split's keys if too few train."""
    if split.limit is not None:
        n = min(n, split.limit)
    n_test = int(round(split.test * n)) if split.test < 1 else int(split.test)
    n_val = int(round(split.validation * n)) if split.validation < 1 else int(split.validation)
    n_test = max(n_test, 1)
    if n - n_test - n_val < MIN_TRAIN_IMAGES:
        left = "no training images" if n_test + n_val >= n else f"only {n - n_test - n_val} training images"
        raise DataError(
            f"{source}: dataset.split leaves {left} (at least {MIN_TRAIN_IMAGES} are needed): {n} images"
            f"{f' (split.limit={split.limit})' if split.limit is not None else ''}, split.test={split.test} gives "
            f"{n_test}, split.validation={split.validation} gives {n_val}"
        )
    order = np.random.default_rng(split.seed).permutation(n) if split.shuffle else np.arange(n)
    n_train = n - n_val - n_test
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def make_splits(
    images: np.ndarray, split: SplitConfig, device: torch.device | str | None, spec: str = "", labels: np.ndarray | None = None
) -> DataSplits:
    """Split ``images`` (and ``labels`` alike, if given) by ``split`` and move the parts to ``device`` once.

    ``device=None`` keeps the parts numpy arrays and imports no torch: the data of a trial whose architectures
    make no torch models (``Architecture.torch_models`` false), which only reads their shapes and ``info``.
    """
    train_idx, val_idx, test_idx = split_indices(len(images), split, f"dataset {spec!r}" if spec else "dataset")
    if len(val_idx) == 0:
        # Early stopping and pruning need a validation set; fall back to the training images.
        val_idx = train_idx[: min(len(train_idx), 1000)]
        validation_source = "train"
    else:
        validation_source = "held-out"
    digest = hashlib.sha256(np.concatenate([train_idx, val_idx, test_idx]).astype(np.int64).tobytes()).hexdigest()[:16]
    info = {
        "dataset": spec,
        "n_train": int(len(train_idx)),
        "n_validation": int(len(val_idx)),
        "n_test": int(len(test_idx)),
        "validation_source": validation_source,
        "split": asdict(split),
        "split_sha256": digest,
        "input_shape": list(images.shape[1:]),
    }

    def part(idx: np.ndarray, array: np.ndarray = images) -> torch.Tensor:
        contiguous = np.ascontiguousarray(array[idx])
        if device is None:  # numpy arrays where tensors are declared: a torch-free trial never handles them as tensors
            return cast("torch.Tensor", contiguous)
        # deferred: torch is the tensors' library; the split itself (and a torch-free trial's data) needs none
        import torch

        return torch.from_numpy(contiguous).to(torch.device(device))

    if labels is None:
        return DataSplits(part(train_idx), part(val_idx), part(test_idx), info)
    return DataSplits(
        part(train_idx),
        part(val_idx),
        part(test_idx),
        info,
        part(train_idx, labels),
        part(val_idx, labels),
        part(test_idx, labels),
    )
