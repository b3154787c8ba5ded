"""benchmarks/search_table.py: merging a table recorded in shards."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import search_table  # noqa: E402

GRID = [dict(zip(search_table.GRID, combo)) for combo in itertools.product(*search_table.GRID.values())]


def _row(k: int) -> dict:
    """A stand-in base whose every value names its grid index ``k``."""
    shape = (len(search_table.EPOCHS), len(search_table.BITS), len(search_table.OBJECTIVES))
    return {"base": GRID[k], "values": np.full(shape, float(k)).tolist(), "validation_curve": [float(k)] * 30,
            "train_seconds": float(k), "compressed_validation": [[float(k)] * len(search_table.BITS)] * 30,
            "data": {"train": 7000}}


def _shards(tmp_path: Path, keys: list[int], shards: int = 2) -> list[Path]:
    files = []
    for n in range(shards):
        f = tmp_path / f"shard{n}.json"
        f.write_text(json.dumps({str(k): _row(k) for k in keys if k % shards == n}))
        files.append(f)
    return files


def test_merged_shards_load_as_one_table_in_grid_order(tmp_path: Path) -> None:
    path = tmp_path / "table.json.gz"
    files = _shards(tmp_path, list(range(len(GRID))))
    search_table.merge_shards(search_table.MNIST_SPACE, path, files)
    table = search_table.load(path)
    assert table.bases == GRID  # 10 comes after 9, not after 1
    for k in (0, 9, 10, 101, len(GRID) - 1):
        params = {**GRID[k], "training.epochs": 30, "compressor0": "uniform", "compressor0.uniform.bits": 4}
        base, epoch, bits = table.index_of(params)
        assert table.values[base, epoch, bits, 0] == k  # each base's values stay with it
        assert table.validation_curves[base, 0] == k and table.compressed_validation[base, 4, bits] == k
    assert table.holdout == [] and table.meta["processes"] == 2
    assert not any(f.exists() for f in files)


def test_an_incomplete_recording_is_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "table.json.gz"
    files = _shards(tmp_path, list(range(len(GRID) - 1)))
    with pytest.raises(RuntimeError, match=f"{len(GRID) - 1} of the grid's {len(GRID)} bases"):
        search_table.merge_shards(search_table.MNIST_SPACE, path, files)
    assert not path.exists() and all(f.exists() for f in files)  # nothing lost, nothing half-written
