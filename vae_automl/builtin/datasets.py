"""Built-in datasets: scikit-learn's digits (shipped as an array), torchvision's MNIST family, local npz and IDX files."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae_automl.components import Dataset
from vae_automl.errors import DataError
from vae_automl.plugin_manager import hookimpl

IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not), the format of MNIST and its relatives."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


DIGITS_FILE = Path(__file__).with_name("digits.npz")
"""scikit-learn's digits (BSD-3, from the UCI optdigits test set) as uint8 0..16: ``images`` 1797 x 8 x 8, ``labels``.

Shipped so that scikit-learn (and scipy under it) need not be installed for the default dataset;
tests/test_data.py checks it equals ``sklearn.datasets.load_digits()`` where scikit-learn is installed.
"""


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(DIGITS_FILE, allow_pickle=False) as archive:
            return archive["images"], archive["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{DIGITS_FILE}: the embedded digits dataset cannot be read ({exc}); reinstall vae-automl") from exc


class DigitsDataset(Dataset):
    name = "digits"
    help = "scikit-learn's 1,797 handwritten digits, 8x8 (embedded, the default)"

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        # 0..16 grey levels scaled as scikit-learn's users do, so results match those made with load_digits()
        return (_digits()[0] / 16.0).astype(np.float32)

    def load_labels(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        return _digits()[1].astype(np.int64)


class IdxFamilyDataset(Dataset):
    """MNIST-format datasets read from a folder, downloaded by torchvision only when asked."""

    def __init__(self, name: str, torchvision_class: str, help: str) -> None:
        self.name = name
        self.torchvision_class = torchvision_class
        self.help = help + " (IDX files from dataset.data_dir; download: true fetches them)"

    def _candidate_dirs(self, data_dir: str) -> list[Path]:
        root = Path(data_dir).expanduser()
        return [root, root / self.name, root / self.torchvision_class / "raw"]

    def _find(self, data_dir: str, stem: str) -> Path | None:
        for folder in self._candidate_dirs(data_dir):
            for suffix in ("", ".gz"):
                path = folder / (stem + suffix)
                if path.is_file():
                    return path
        return None

    def load_labels(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        data_dir = arg or data_dir
        if data_dir is None:
            raise DataError(f"dataset {self.name!r} needs a folder: set dataset.data_dir, --data-dir or $VAE_AUTOML_DATA_DIR")
        # The same parts as load(), in the same order, so label i belongs to image i.
        parts = [
            (self._find(data_dir, f"{split}-images-idx3-ubyte"), self._find(data_dir, f"{split}-labels-idx1-ubyte"))
            for split in ("train", "t10k")
        ]
        missing = [
            str(images).replace("images-idx3", "labels-idx1") for images, labels in parts if images is not None and labels is None
        ]
        if missing:
            raise DataError(f"dataset {self.name!r}: no labels file beside the images: {', '.join(missing)}")
        return np.concatenate([read_idx(labels) for images, labels in parts if images is not None and labels is not None])

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        data_dir = arg or data_dir
        if data_dir is None:
            raise DataError(f"dataset {self.name!r} needs a folder: set dataset.data_dir, --data-dir or ${'VAE_AUTOML_DATA_DIR'}")
        parts = [self._find(data_dir, f"{split}-images-idx3-ubyte") for split in ("train", "t10k")]
        if not any(parts) and download:
            self._download(data_dir)
            parts = [self._find(data_dir, f"{split}-images-idx3-ubyte") for split in ("train", "t10k")]
        found = [read_idx(p) for p in parts if p is not None]
        if not found:
            looked = ", ".join(str(d) for d in self._candidate_dirs(data_dir))
            raise DataError(
                f"dataset {self.name!r}: no train-/t10k-images-idx3-ubyte[.gz] in {looked}"
                + ("" if download else "; set download: true to fetch it")
            )
        # Train images first, then test: the standard split keeps the test set last.
        return np.concatenate(found)

    def _download(self, data_dir: str) -> None:
        try:
            # deferred: torchvision is optional (the vision extra)
            import torchvision.datasets as tvd
        except ImportError as exc:
            raise DataError(f"downloading {self.name!r} needs torchvision: pip install torchvision") from exc
        cls = getattr(tvd, self.torchvision_class)
        try:
            for train in (True, False):
                cls(root=data_dir, train=train, download=True)
        except Exception as exc:
            raise DataError(f"downloading {self.name!r} into {data_dir} failed: {exc}") from exc


class NpzDataset(Dataset):
    name = "npz"
    help = "npz:PATH (first array) or npz:PATH#KEY; uint8 N x H x W or floats in [0, 1]"

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        if not arg:
            raise DataError("dataset 'npz' needs a path: npz:PATH or npz:PATH#KEY")
        path, _, key = arg.partition("#")
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such npz file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise DataError(f"{path}: the npz file holds no arrays")
                if key and key not in archive.files:
                    raise DataError(f"{path}: no array {key!r}; it holds {', '.join(archive.files)}")
                return archive[key or archive.files[0]]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read as npz: {exc}") from exc


class IdxDataset(Dataset):
    name = "idx"
    help = "idx:PATH, an IDX image file (gzip or not)"

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        if not arg:
            raise DataError("dataset 'idx' needs a path: idx:PATH")
        return read_idx(os.path.expanduser(arg))


@hookimpl
def register_datasets(register: Callable[[Dataset], None]) -> None:
    register(DigitsDataset())
    register(IdxFamilyDataset("mnist", "MNIST", "MNIST handwritten digits, 28x28"))
    register(IdxFamilyDataset("fashion-mnist", "FashionMNIST", "Fashion-MNIST clothing, 28x28"))
    register(IdxFamilyDataset("kmnist", "KMNIST", "Kuzushiji-MNIST characters, 28x28"))
    register(NpzDataset())
    register(IdxDataset())
