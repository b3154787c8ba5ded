from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_automl.builtin.datasets import read_idx
from vae_automl.data import SplitConfig, load_images, make_splits, split_indices
from vae_automl.errors import DataError


def write_idx(path: Path, images: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, images.ndim) + b"".join(struct.pack(">I", d) for d in images.shape)
    payload = header + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_loader_round_trip(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    path = tmp_path / ("imgs.idx.gz" if compress else "imgs.idx")
    write_idx(path, images, compress)
    assert np.array_equal(read_idx(path), images)
    loaded = load_images(f"idx:{path}")
    assert loaded.shape == (7, 1, 5, 6) and loaded.dtype == np.float32
    assert np.allclose(loaded[:, 0] * 255, images)


def test_idx_loader_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad.idx: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 4, 4) + b"\0" * 5)
    with pytest.raises(DataError, match="short.idx: header says shape"):
        read_idx(short)
    with pytest.raises(DataError, match="no such IDX file"):
        load_images(f"idx:{tmp_path / 'missing.idx'}")


def test_npz_loader_first_array_and_key(tmp_path: Path) -> None:
    a = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    b = np.random.default_rng(2).random((3, 1, 6, 6)).astype(np.float32)
    path = tmp_path / "set.npz"
    np.savez(path, first=a, second=b)
    assert load_images(f"npz:{path}").shape == (4, 1, 8, 8)
    assert np.array_equal(load_images(f"npz:{path}#second"), b)
    with pytest.raises(DataError, match="no array 'third'; it holds first, second"):
        load_images(f"npz:{path}#third")


def test_npz_loader_refuses_channels_last(tmp_path: Path) -> None:
    path = tmp_path / "nhwc.npz"
    np.savez(path, images=np.zeros((5, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"nhwc\.npz'?: images of shape \(5, 8, 8, 3\) look channels-last"):
        load_images(f"npz:{path}")
    # channels-first RGB, and single-channel images whose width is 3, are read as they are
    np.savez(tmp_path / "nchw.npz", images=np.zeros((5, 3, 8, 8), dtype=np.uint8))
    assert load_images(f"npz:{tmp_path / 'nchw.npz'}").shape == (5, 3, 8, 8)
    np.savez(tmp_path / "narrow.npz", images=np.zeros((5, 1, 8, 3), dtype=np.uint8))
    assert load_images(f"npz:{tmp_path / 'narrow.npz'}").shape == (5, 1, 8, 3)


def test_npz_loader_rejects_out_of_range_floats(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.full((3, 4, 4), 2.5, dtype=np.float32))
    with pytest.raises(DataError, match=r"floats in \[0, 1\]"):
        load_images(f"npz:{path}")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match="registered: .*digits.*npz"):
        load_images("imagenet")


def test_digits_embedded() -> None:
    images = load_images("digits")
    assert images.shape == (1797, 1, 8, 8) and 0.0 <= images.min() and images.max() <= 1.0


def test_shipped_digits_equal_scikit_learn_s() -> None:
    # the array replaced scikit-learn as a core dependency; results stay identical only if it holds the same values
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the dev extra) is the oracle")
    from vae_automl.builtin.datasets import DigitsDataset

    original = sklearn_datasets.load_digits()
    dataset = DigitsDataset()
    images = dataset.load(None, None, False)
    assert images.dtype == np.float32
    assert np.array_equal(images, (original.images / 16.0).astype(np.float32))
    labels = dataset.load_labels(None, None, False)
    assert labels.dtype == np.int64 and np.array_equal(labels, original.target)


def test_split_is_seeded_and_disjoint() -> None:
    a = split_indices(100, SplitConfig(validation=0.1, test=0.2, seed=3))
    b = split_indices(100, SplitConfig(validation=0.1, test=0.2, seed=3))
    c = split_indices(100, SplitConfig(validation=0.1, test=0.2, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert [len(x) for x in a] == [70, 10, 20]
    assert len(set(np.concatenate(a))) == 100


def test_ordered_split_keeps_test_last() -> None:
    train, val, test = split_indices(10_000, SplitConfig(validation=0, test=2000, shuffle=False))
    assert train[0] == 0 and train[-1] == 7999 and test[0] == 8000 and len(val) == 0


def test_make_splits_records_split_and_uses_device() -> None:
    images = load_images("digits")
    splits = make_splits(images, SplitConfig(validation=0.1, test=0.2, seed=0), torch.device("cpu"), spec="digits")
    assert splits.train.device.type == "cpu" and splits.input_shape == (1, 8, 8)
    assert splits.info["n_train"] + splits.info["n_validation"] + splits.info["n_test"] == 1797
    assert splits.info["split"]["seed"] == 0 and len(splits.info["split_sha256"]) == 16


def test_split_with_no_training_images() -> None:
    with pytest.raises(DataError, match="no training images"):
        split_indices(10, SplitConfig(validation=5, test=5))


def test_real_mnist_test_set(mnist_dir: Path) -> None:
    images = load_images("mnist", data_dir=str(mnist_dir))
    assert images.shape == (10_000, 1, 28, 28)
    with pytest.raises(DataError, match="no train-/t10k-images"):
        load_images("fashion-mnist", data_dir=str(mnist_dir / "nowhere"))
