from __future__ import annotations

import itertools

import numpy as np
import pytest

from vae_automl import pareto


def test_non_dominated_mixed_directions() -> None:
    points = [[1, 5], [2, 4], [3, 3], [2, 6], [4, 2], [4, 4]]
    assert pareto.non_dominated(points, ["minimize", "minimize"]) == [0, 1, 2, 4]
    # maximizing the second objective flips which points survive
    assert pareto.non_dominated(points, ["minimize", "maximize"]) == [0, 3]


def test_hypervolume_2d_exact() -> None:
    points = [[1, 3], [2, 2], [3, 1]]
    # staircase under reference (4, 4): 3*1 + 2*1 + 1*1 + ... computed by hand = 6
    assert pareto.hypervolume(points, [4, 4], ["minimize", "minimize"]) == pytest.approx(6.0)
    assert pareto.hypervolume(points, [4, 0], ["minimize", "maximize"]) == pytest.approx(
        pareto.hypervolume([[1, -3], [2, -2], [3, -1]], [4, 0], ["minimize", "minimize"]))


def brute_force_hv(points: np.ndarray, ref: np.ndarray, grid: int = 40) -> float:
    axes = [np.linspace(0, r, grid, endpoint=False) + r / grid / 2 for r in ref]
    cells = np.array(list(itertools.product(*axes)))
    dominated = np.zeros(len(cells), dtype=bool)
    for p in points:
        dominated |= np.all(cells >= p, axis=1)
    return dominated.mean() * np.prod(ref)


def test_hypervolume_3d_matches_grid_count() -> None:
    rng = np.random.default_rng(0)
    points = rng.integers(0, 10, size=(12, 3)).astype(float) / 10
    ref = np.array([1.0, 1.0, 1.0])
    exact = pareto.hypervolume(points, ref, ["minimize"] * 3)
    assert exact == pytest.approx(brute_force_hv(points, ref), abs=1e-9)


def test_normalized_hypervolume_in_unit_interval() -> None:
    points = [[10.0, 1000.0], [20.0, 500.0]]
    hv = pareto.normalized_hypervolume(points, ideal=[0, 0], reference=[40, 2000], directions=["minimize", "minimize"])
    # scaled points (0.25, 0.5) and (0.5, 0.25) under (1, 1): 0.75*0.5 + 0.5*0.25
    assert hv == pytest.approx(0.5)


def test_knee_point_prefers_balanced_trade_off() -> None:
    points = [[0.0, 10.0], [1.0, 1.0], [10.0, 0.0], [5.0, 5.0]]
    assert pareto.knee_point(points, ["minimize", "minimize"]) == 1
    assert pareto.knee_point([], ["minimize"]) is None


def test_default_reference_dominated_by_all() -> None:
    points = [[1.0, 5.0], [3.0, 2.0]]
    ref = pareto.default_reference(points, ["minimize", "maximize"])
    assert ref[0] > 3.0 and ref[1] < 2.0
