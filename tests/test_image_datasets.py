"""Datasets users have: a folder of PNG/JPEG images, any torchvision dataset on disk, resized and converted as the YAML says."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from vae_automl.config import load_space_text
from vae_automl.errors import ConfigError, DataError
from vae_automl.images import LUMA, convert_color, resize

Image = pytest.importorskip("PIL.Image", reason="folder: datasets need Pillow (the vision extra)")


def grey_pngs(folder: Path, n: int = 4, size: tuple[int, int] = (6, 5), seed: int = 0) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, "L").save(folder / f"img-{i:02d}.png")
    return pixels


def load(spec: str, image_size: tuple[int, int] | None = None, color: str | None = None, data_dir: str | None = None):
    # a fresh instance every time: load_images caches per spec, and these folders are rewritten between calls
    from vae_automl.builtin.datasets import FolderDataset, TorchvisionDataset

    name, _, arg = spec.partition(":")
    dataset = FolderDataset() if name == "folder" else TorchvisionDataset()
    from vae_automl.data import to_unit_float
    from vae_automl.images import reshape_images

    shaped = dataset.load_resized(arg, data_dir, False, image_size, color) if image_size or color else None
    if shaped is not None:
        return to_unit_float(np.asarray(shaped), spec)
    return reshape_images(to_unit_float(np.asarray(dataset.load(arg, data_dir, False)), spec), image_size, color, spec)


def test_folder_of_grey_pngs_loads_exactly_in_sorted_order(tmp_path: Path) -> None:
    pixels = grey_pngs(tmp_path / "imgs")
    (tmp_path / "imgs" / "._img-00.png").write_bytes(b"\x00\x05\x16\x07 a macOS resource fork, not a PNG")
    images = load(f"folder:{tmp_path / 'imgs'}")
    assert images.shape == (4, 1, 6, 5) and images.dtype == np.float32
    assert np.array_equal(np.round(images[:, 0] * 255).astype(np.uint8), pixels)


def test_load_images_reads_a_folder_through_the_registry(tmp_path: Path) -> None:
    from vae_automl.data import load_images

    pixels = grey_pngs(tmp_path / "via-registry", n=3)
    images = load_images(f"folder:{tmp_path / 'via-registry'}", image_size=(3, 3), color="rgb")
    assert images.shape == (3, 3, 3, 3)
    expected = np.asarray(Image.fromarray(pixels[1], "L").resize((3, 3), Image.Resampling.BILINEAR)) / 255.0
    assert np.allclose(images[1, 2], expected, atol=1e-6)


def test_rgb_images_become_grey_or_stay_rgb_as_asked(tmp_path: Path) -> None:
    folder = tmp_path / "rgb"
    folder.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    for i, image in enumerate(rgb):
        Image.fromarray(image, "RGB").save(folder / f"{i}.png")
    as_rgb = load(f"folder:{folder}")  # unset colour: the folder's own, RGB here
    assert as_rgb.shape == (2, 3, 4, 4)
    assert np.array_equal(np.round(as_rgb * 255).astype(np.uint8), rgb.transpose(0, 3, 1, 2))
    grey = load(f"folder:{folder}", color="grey")
    expected = np.stack([np.asarray(Image.fromarray(image, "RGB").convert("L")) for image in rgb])
    assert grey.shape == (2, 1, 4, 4) and np.array_equal(np.round(grey[:, 0] * 255).astype(np.uint8), expected)


def test_jpeg_files_load_too(tmp_path: Path) -> None:
    folder = tmp_path / "jpegs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(folder / "a.JPG", quality=95)
    Image.fromarray(np.full((8, 8), 40, np.uint8), "L").save(folder / "b.jpeg", quality=95)
    images = load(f"folder:{folder}")
    assert images.shape == (2, 1, 8, 8) and abs(images[0].mean() - 200 / 255) < 0.01 and abs(images[1].mean() - 40 / 255) < 0.01


def test_mixed_sizes_are_refused_by_name_unless_resized(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    grey_pngs(folder, n=2, size=(6, 5))
    Image.fromarray(np.zeros((9, 7), np.uint8), "L").save(folder / "wide.png")
    with pytest.raises(DataError, match=r"img-00.png is 6x5, wide.png is 9x7 .*dataset.image_size"):
        load(f"folder:{folder}")
    assert load(f"folder:{folder}", image_size=(4, 4)).shape == (3, 1, 4, 4)


def test_empty_folder_missing_folder_and_unreadable_file_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{empty}: holds no PNG or JPEG images"):
        load(f"folder:{empty}")
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: no such folder"):
        load(f"folder:{tmp_path / 'nope'}")
    broken = tmp_path / "broken"
    grey_pngs(broken, n=2)
    (broken / "img-01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"img-01.png: cannot read as an image"):
        load(f"folder:{broken}")


def test_subfolders_are_classes(tmp_path: Path) -> None:
    from vae_automl.builtin.datasets import FolderDataset

    grey_pngs(tmp_path / "cats", n=2)
    grey_pngs(tmp_path / "ants", n=3)
    labels = FolderDataset().load_labels(str(tmp_path), None, False)
    assert labels is not None and labels.tolist() == [0, 0, 0, 1, 1]  # ants before cats, as the images are
    grey_pngs(tmp_path, n=1)  # an image outside any class folder: no labels
    assert FolderDataset().load_labels(str(tmp_path), None, False) is None


def test_array_datasets_are_resized_and_converted_too() -> None:
    from vae_automl.data import load_images

    digits = load_images("digits")
    shaped = load_images("digits", image_size=(16, 12), color="rgb")
    assert shaped.shape == (1797, 3, 16, 12)
    assert np.array_equal(shaped[:, 0], shaped[:, 2])  # grey replicated into the three channels
    assert np.allclose(resize(digits, (8, 8)), digits)  # no resize when the size already matches
    rgb = np.random.default_rng(2).random((2, 3, 4, 4), dtype=np.float32)
    grey = convert_color(rgb, "grey", "test")
    assert grey.shape == (2, 1, 4, 4) and np.allclose(grey[:, 0], np.einsum("nchw,c->nhw", rgb, LUMA))
    assert np.allclose(grey[0, 0, 0, 0], 0.299 * rgb[0, 0, 0, 0] + 0.587 * rgb[0, 1, 0, 0] + 0.114 * rgb[0, 2, 0, 0])


def test_yaml_keys_are_checked_and_stored() -> None:
    base = "architecture:\n  mlp:\n    latent_dim: 4\ndataset:\n  spec: digits\n"
    space = load_space_text(base + "  image_size: [16, 12]\n  color: rgb\n", "d.yaml")
    assert space.dataset.image_size == (16, 12) and space.dataset.color == "rgb"
    assert load_space_text(base + "  image_size: 28\n", "d.yaml").dataset.image_size == (28, 28)
    with pytest.raises(ConfigError, match=r"d.yaml: dataset.image_size: image_size must be a positive int"):
        load_space_text(base + "  image_size: [0, 4]\n", "d.yaml")
    with pytest.raises(ConfigError, match=r"d.yaml: dataset.color"):
        load_space_text(base + "  color: sepia\n", "d.yaml")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_torchvision_dataset_from_disk_never_downloads(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    train, test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    for stem, array in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test),
                        ("train-labels-idx1-ubyte", np.arange(5) % 10), ("t10k-labels-idx1-ubyte", np.array([7, 8]))):
        write_idx(raw / stem, array)
        # torchvision reads the uncompressed files
        (raw / stem).write_bytes(gzip.decompress((raw / stem).read_bytes()))
    from vae_automl.builtin.datasets import TorchvisionDataset

    images = load("torchvision:MNIST", data_dir=str(tmp_path))
    assert images.shape == (7, 1, 28, 28)
    assert np.array_equal(np.round(images[:, 0] * 255).astype(np.uint8), np.concatenate([train, test]))  # test set last
    labels = TorchvisionDataset().load_labels("MNIST", str(tmp_path), False)
    assert labels is not None and labels.tolist() == [0, 1, 2, 3, 4, 7, 8]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"torchvision:KMNIST: not found in .*never downloads at run time"):
        load("torchvision:KMNIST", data_dir=str(empty))
    assert not any(empty.iterdir())  # nothing fetched, nothing written
    with pytest.raises(DataError, match="torchvision has no dataset 'NoSuchSet'; it has .*MNIST"):
        load("torchvision:NoSuchSet", data_dir=str(empty))


def test_a_search_and_its_export_run_on_a_resized_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the YAML's image_size and color reach the trials and the export's re-measurement alike (same images, same split)
    from vae_automl.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    rgb = np.random.default_rng(4).integers(0, 256, size=(40, 12, 10, 3), dtype=np.uint8)
    for i, image in enumerate(rgb):
        Image.fromarray(image, "RGB").save(folder / f"{i:03d}.png")
    space = tmp_path / "photos.yaml"
    space.write_text(
        f"name: photos\ndataset:\n  spec: folder:{folder}\n  image_size: [6, 5]\n  color: grey\n"
        "  split: {validation: 0.1, test: 0.2, seed: 0}\n"
        "device: cpu\narchitecture:\n  mlp:\n    hidden_layers: 1\n    hidden_width: 8\n    latent_dim: 2\n"
        "training:\n  epochs: 1\n  batch_size: 16\nobjectives: [test_elbo_nats, size_bytes]\n"
        "latency: {batch_size: 4, repeats: 2, warmup: 1}\ntrials: 1\n"
    )
    run = tmp_path / "run"
    assert main(["search", str(space), "--out", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["completed"] == 1
    assert main(["export", "--out", str(run), "--formats", "safetensors", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)["exported"]
    manifest = json.loads((Path(exported[0]["folder"]) / "manifest.json").read_text())
    assert manifest["model_config"]["input_shape"] == [1, 6, 5]
    assert manifest["checks"] and all(check["ok"] for check in manifest["checks"])
