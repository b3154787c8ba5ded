"""Built-in datasets: scikit-learn's digits (shipped as an array), the MNIST family, npz, IDX, image folders, torchvision."""

from __future__ import annotations

import gzip
import inspect
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class FolderDataset(Dataset):
    """Every PNG or JPEG under a folder, in sorted path order; labels from first-level subfolders, if all are in one."""

    name = "folder"
    help = "folder:PATH, PNG/JPEG images (recursive; subfolders are classes); dataset.image_size / color resize and convert"

    def _files(self, arg: str | None, data_dir: str | None) -> tuple[Path, list[Path]]:
        if not arg:
            raise DataError("dataset 'folder' needs a path: folder:PATH")
        root = Path(arg).expanduser()
        if not root.is_absolute() and data_dir and not root.exists():
            root = Path(data_dir).expanduser() / root
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (dataset folder:{arg})")
        # hidden files and folders (macOS's ._NAME.png resource forks, .ipynb_checkpoints) are not images of the set
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            raise DataError(f"{root}: holds no PNG or JPEG images (looked for {', '.join(IMAGE_SUFFIXES)} in it and below)")
        return root, files

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        return self._decode(arg, data_dir, None, None)

    def load_resized(
        self, arg: str | None, data_dir: str | None, download: bool, image_size: tuple[int, int] | None, color: str | None
    ) -> np.ndarray:
        return self._decode(arg, data_dir, image_size, color)

    def _decode(self, arg: str | None, data_dir: str | None, image_size: tuple[int, int] | None, color: str | None) -> np.ndarray:
        try:
            # deferred: Pillow is optional (the vision extra) and only folder: datasets decode files
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:
            raise DataError("dataset folder: needs Pillow to read PNG and JPEG: pip install 'vae-automl[vision]'") from exc
        root, files = self._files(arg, data_dir)
        images = []
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    images.append(image.copy())
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DataError(f"{path}: cannot read as an image: {exc}") from exc
        if color is None:
            # the folder's own colour: grey only if every image is
            color = "grey" if all(image.mode in GREY_MODES for image in images) else "rgb"
        mode = "L" if color == "grey" else "RGB"
        arrays = []
        for path, image in zip(files, images):
            if image.mode in ("I", "I;16", "F"):
                # 16-bit and float PNGs: scale to 8 bits before Pillow's L conversion clips them
                values = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode != "F" else max(float(values.max()), 1.0)
                image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            image = image.convert(mode)
            if image_size is not None and image.size != (image_size[1], image_size[0]):
                image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            arrays.append((path, np.asarray(image, dtype=np.uint8)))
        first_path, first = arrays[0]
        for path, array in arrays[1:]:
            if array.shape[:2] != first.shape[:2]:
                raise DataError(
                    f"{root}: images differ in size: {first_path.relative_to(root)} is {first.shape[0]}x{first.shape[1]}, "
                    f"{path.relative_to(root)} is {array.shape[0]}x{array.shape[1]} (height x width); "
                    "set dataset.image_size: [height, width] in the YAML to resize them"
                )
        stacked = np.stack([array for _, array in arrays])
        return stacked if stacked.ndim == 3 else np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))

    def load_labels(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray | None:
        root, files = self._files(arg, data_dir)
        classes = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
        if any(c is None for c in classes):
            return None
        names = sorted(set(c for c in classes if c is not None))
        return np.array([names.index(c) for c in classes if c is not None], dtype=np.int64)


class TorchvisionDataset(Dataset):
    """``torchvision:NAME``: any ``torchvision.datasets`` class whose files are already in the data folder."""

    name = "torchvision"
    help = "torchvision:NAME (e.g. CIFAR10, SVHN, FashionMNIST) from files already in data_dir; never downloads"

    def _parts(self, arg: str | None, data_dir: str | None) -> list[object]:
        if not arg:
            raise DataError("dataset 'torchvision' needs a class name: torchvision:NAME, e.g. torchvision:CIFAR10")
        try:
            # deferred: torchvision is optional (the vision extra)
            import torchvision.datasets as tvd
        except ImportError as exc:
            raise DataError(f"dataset torchvision:{arg} needs torchvision: pip install 'vae-automl[vision]'") from exc
        cls = getattr(tvd, arg, None)
        if not isinstance(cls, type):
            known = sorted(n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and n[0].isupper())
            raise DataError(f"torchvision has no dataset {arg!r}; it has {', '.join(known)}")
        if data_dir is None:
            raise DataError(
                f"dataset torchvision:{arg} needs its folder: set dataset.data_dir, --data-dir or $VAE_AUTOML_DATA_DIR"
            )
        root = str(Path(data_dir).expanduser())
        params = inspect.signature(cls).parameters
        base: dict[str, object] = {"root": root} if "root" in params else {}
        if "download" in params:
            base["download"] = False  # never at run time: the data must already be on disk
        if "train" in params:
            variants: list[dict[str, object]] = [{"train": True}, {"train": False}]
        elif "split" in params:
            variants = [{"split": "train"}, {"split": "test"}]
        else:
            variants = [{}]
        parts, errors = [], []
        for variant in variants:
            try:
                parts.append(cls(**base, **variant))
            except Exception as exc:  # torchvision raises RuntimeError, ValueError or OSError for missing files
                errors.append(f"{variant or 'default'}: {exc}")
        if not parts:
            raise DataError(
                f"dataset torchvision:{arg}: not found in {root} ({'; '.join(errors)}); vae-automl never downloads "
                f"at run time: fetch it once with torchvision.datasets.{arg}(root={root!r}, download=True)"
            )
        return parts

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        # train first, then test: a split with shuffle: false keeps the test set last
        return np.concatenate([_torchvision_images(part, f"torchvision:{arg}") for part in self._parts(arg, data_dir)])

    def load_labels(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray | None:
        labels = [_torchvision_labels(part) for part in self._parts(arg, data_dir)]
        if any(part is None for part in labels):
            return None
        return np.concatenate([np.asarray(part) for part in labels if part is not None]).astype(np.int64)


def _torchvision_images(dataset: object, source: str) -> np.ndarray:
    data = getattr(dataset, "data", None)
    if data is not None and hasattr(data, "shape") and len(data) == len(dataset) and data.ndim in (3, 4):  # type: ignore[arg-type]
        array = np.asarray(data)
        if array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
            array = array.transpose(0, 3, 1, 2)  # CIFAR keeps N x H x W x C
        return np.ascontiguousarray(array)
    # datasets that decode files per item (ImageFolder-like): go through __getitem__
    images = [np.asarray(dataset[i][0]) for i in range(len(dataset))]  # type: ignore[index, arg-type]
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise DataError(f"{source}: images differ in shape ({', '.join(map(str, sorted(shapes)[:3]))}); set dataset.image_size")
    stacked = np.stack(images)
    return stacked if stacked.ndim == 3 else np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def _torchvision_labels(dataset: object) -> np.ndarray | None:
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):  # type: ignore[arg-type]
            return np.asarray(value)
    return None


@hookimpl
def register_datasets(register: Callable[[Dataset], None]) -> None:
    register(DigitsDataset())
    register(IdxFamilyDataset("mnist", "MNIST", "MNIST handwritten digits, 28x28"))
    register(IdxFamilyDataset("fashion-mnist", "FashionMNIST", "Fashion-MNIST clothing, 28x28"))
    register(IdxFamilyDataset("kmnist", "KMNIST", "Kuzushiji-MNIST characters, 28x28"))
    register(NpzDataset())
    register(IdxDataset())
    register(FolderDataset())
    register(TorchvisionDataset())
