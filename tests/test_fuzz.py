"""Fuzzing (hypothesis): random mutations of valid search spaces and data files give a valid result or a named
project error, never a traceback.

Each property runs a bounded number of examples (``FAST``) so the default suite stays quick; hypothesis keeps the
failing examples it finds in ``.hypothesis/`` and replays them first on the next run.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vae_automl import data as data_mod  # noqa: E402
from vae_automl.config import SearchSpace, load_space, load_space_text  # noqa: E402
from vae_automl.data import SplitConfig, load_images, make_splits  # noqa: E402
from vae_automl.errors import ConfigError, DataError, VaeAutomlError  # noqa: E402
from vae_automl.registry import get_registry  # noqa: E402
from vae_automl.space import resolve, suggest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = settings(
    max_examples=int(os.environ.get("VAE_AUTOML_FUZZ_EXAMPLES", "60")),  # 500 finds nothing more today, in ~30 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SPACES = ["quick.yaml", "mnist_mlp.yaml", "mnist_conv.yaml"]
_files = itertools.count()

# values a careless or hostile edit puts in a YAML: every YAML scalar kind, the edges of numbers, paths, nesting
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["search", "none", "../../x", "/etc", "", "10", "1e-3"]),
    st.text(max_size=12),
)
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a parsed YAML document (mapping keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], new: Any, delete: bool) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new


@st.composite
def mutated_space(draw: st.DrawFn) -> tuple[str, str]:
    """A shipped search space with 1-3 of its values replaced, deleted or keys added, as YAML text."""
    name = draw(st.sampled_from(SPACES))
    doc = yaml.safe_load((REPO / "search_spaces" / name).read_text())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add":
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(value)
            continue
        _set(doc, path, draw(value), delete=action == "delete")
    return name, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _samplable(space: SearchSpace) -> None:
    """A loaded space must sample and resolve a trial (what every run does first), without training."""
    study = optuna.create_study(directions=["minimize"] * len(space.objectives), sampler=optuna.samplers.RandomSampler(0))
    trial = study.ask()
    resolve(space, suggest(trial, space), get_registry())


def _load_or_named_error(text: str, file: str) -> SearchSpace | None:
    try:
        space = load_space_text(text, file)
    except ConfigError as exc:
        assert str(exc).startswith(f"{file}: "), f"a config error must name the file first: {exc}"
        return None
    except VaeAutomlError:  # a plugin's own check (PluginError, DataError) under the loader: named, not a traceback
        return None
    return space


@FAST
@given(mutated_space())
def test_mutated_search_spaces_load_or_name_the_error(case: tuple[str, str]) -> None:
    name, text = case
    space = _load_or_named_error(text, name)
    if space is not None:
        try:
            _samplable(space)
        except VaeAutomlError:
            pass


@FAST
@given(name=st.sampled_from(SPACES), data=st.data())
def test_byte_level_damage_to_a_space_file_is_named(name: str, data: st.DataObject, tmp_path: Path) -> None:
    raw = bytearray((REPO / "search_spaces" / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 40))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path / f"damaged-{next(_files)}.yaml"
    path.write_bytes(bytes(raw))
    try:
        load_space(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path.name}: ") or str(exc).startswith(f"{path}: "), str(exc)
    except VaeAutomlError:
        pass


# --- the data loaders ---

dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_,
                          np.complex64])
# plausible image arrays (N x H x W, N x C x H x W, either channel order) half the time, any rank the rest
plausible = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(1, 10), st.integers(1, 10)),
    st.tuples(st.integers(0, 40), st.sampled_from([1, 3, 4, 2]), st.integers(1, 10), st.integers(1, 10)),
    st.tuples(st.integers(0, 40), st.integers(1, 10), st.integers(1, 10), st.sampled_from([1, 3])),
)
shapes = st.one_of(plausible, st.lists(st.integers(0, 12), max_size=5).map(tuple))
specials = st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5, 1e300, 0.0, 1.0])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any dtype and rank, values in [0, 1] or beyond, with NaN/inf and out-of-range values sprinkled in."""
    shape = draw(shapes)
    dtype = np.dtype(draw(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape)) if shape else 1
    if size > 6000:
        shape, size = (size // 64 or 1, 1, 8, 8), (size // 64 or 1) * 64
    values = rng.random(size) * draw(st.sampled_from([1.0, 1.0, 255.0, 2.0]))
    if size and draw(st.booleans()):
        values[draw(st.integers(0, size - 1))] = draw(specials)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex -> real, NaN -> int: the array is meant to be odd
        return values.astype(dtype).reshape(shape) if shape else values.astype(dtype)[0]


def _split_or_named_error(spec: str, split: SplitConfig) -> None:
    data_mod._image_cache.clear()  # the cache is keyed by spec; each example rewrites the file
    try:
        images = load_images(spec)
        splits = make_splits(images, split, "cpu", spec=spec)
    except DataError as exc:
        assert str(exc), "a data error must say what is wrong"
        return
    # what a trial gets: finite pixels in [0, 1], N x C x H x W, non-empty parts
    for part in (splits.train, splits.validation, splits.test):
        assert part.ndim == 4 and len(part) > 0
        assert bool(part.isfinite().all()) and float(part.min()) >= 0.0 and float(part.max()) <= 1.0


splits = st.builds(SplitConfig, validation=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]),
                   test=st.sampled_from([0.0, 0.2, 0.9, 1.0, 5.0]), seed=st.integers(0, 3), shuffle=st.booleans(),
                   limit=st.sampled_from([None, 3, 10, 100]))


@FAST
@given(array=arrays(), split=splits)
def test_npz_arrays_load_or_name_the_error(array: np.ndarray, split: SplitConfig, tmp_path: Path) -> None:
    path = tmp_path / f"a-{next(_files)}.npz"
    np.savez(path, images=array)
    _split_or_named_error(f"npz:{path}", split)


@FAST
@given(array=arrays(), data=st.data())
def test_idx_files_load_or_name_the_error(array: np.ndarray, data: st.DataObject, tmp_path: Path) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D,
             np.dtype(np.float64): 0x0E}
    array = np.atleast_1d(array)
    code = codes.get(array.dtype, 0x08)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex or NaN to uint8: the file is meant to be odd
        big = array.astype(array.dtype.newbyteorder(">")) if array.dtype in codes else array.astype(np.uint8)
    raw = bytearray(bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + big.tobytes())
    for _ in range(data.draw(st.integers(0, 2))):  # then damage: a flipped byte, a cut
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:]
    gz = data.draw(st.booleans())
    path = tmp_path / f"i-{next(_files)}.idx{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    _split_or_named_error(f"idx:{path}", SplitConfig(validation=0.1, test=0.2))


def test_the_fuzzers_do_reach_valid_results(tmp_path: Path) -> None:
    # the oracle side of the properties: an unmutated space loads and samples, a sound array splits
    for name in SPACES:
        _samplable(load_space(REPO / "search_spaces" / name))
    path = tmp_path / "ok.npz"
    np.savez(path, images=np.random.default_rng(0).random((40, 1, 4, 4)).astype(np.float32))
    data_mod._image_cache.clear()
    splits = make_splits(load_images(f"npz:{path}"), SplitConfig(), "cpu")
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40


@FAST
@given(data=st.data())
def test_image_folders_load_or_name_the_error(data: st.DataObject, tmp_path: Path) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    root = tmp_path / f"f-{next(_files)}"
    root.mkdir()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    common = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))  # most folders hold one size
    mixed = data.draw(st.booleans()) and data.draw(st.booleans())
    for i in range(data.draw(st.integers(0, 24))):
        name = f"{i}{data.draw(st.sampled_from(['.png', '.jpg', '.PNG', '.txt']))}"
        kind = data.draw(st.sampled_from(["image", "image", "bytes", "empty"]))
        if kind == "image":
            mode = data.draw(st.sampled_from(["L", "RGB", "RGBA", "1", "I;16", "P"]))
            size = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))) if mixed else common
            pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            image = image_mod.fromarray(pixels, "RGB").convert(mode)
            fmt = "PNG" if name.lower().endswith((".png", ".txt")) else "JPEG"
            (image.convert("RGB") if fmt == "JPEG" and mode not in ("L", "RGB") else image).save(root / name, fmt)
        else:
            (root / name).write_bytes(b"" if kind == "empty" else rng.bytes(data.draw(st.integers(1, 64))))
    _split_or_named_error(f"folder:{root}", SplitConfig(validation=0.1, test=0.2))
