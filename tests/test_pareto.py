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


# --- independent oracles and boundaries (issue 17): ties, duplicates, hand-computed volumes ---

def brute_force_front(points: list[list[float]], directions: list[str]) -> list[int]:
    """O(n^2) dominance written from the definition, sharing no code with pareto.py."""
    def better_or_equal(a: float, b: float, d: str) -> bool:
        return a <= b if d == "minimize" else a >= b

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(better_or_equal(x, y, d) for x, y, d in zip(a, b, directions)) and list(a) != list(b)

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_front_matches_brute_force_dominance_with_ties_and_duplicates(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # values from a small range: many ties in one objective and exact duplicates, as size_bytes gives
    points = rng.integers(0, 4, size=(25, dims)).astype(float).tolist()
    directions = [["minimize", "maximize"][int(b)] for b in rng.integers(0, 2, dims)]
    assert pareto.non_dominated(points, directions) == brute_force_front(points, directions)


def test_a_tie_in_one_objective_and_worse_in_the_other_is_dominated() -> None:
    # equal size_bytes, worse ELBO: dominated (strict domination alone would keep it)
    assert pareto.non_dominated([[1.0, 100.0], [2.0, 100.0]], ["minimize", "minimize"]) == [0]
    assert pareto.non_dominated([[1.0, 100.0], [2.0, 100.0]], ["maximize", "minimize"]) == [1]
    # exact duplicates do not dominate each other: both stay
    assert pareto.non_dominated([[1.0, 100.0], [1.0, 100.0], [1.0, 101.0]], ["minimize", "minimize"]) == [0, 1]
    assert pareto.non_dominated([[3.0]], ["minimize"]) == [0]


def test_hypervolume_hand_computed_1d_2d_3d() -> None:
    assert pareto.hypervolume([[3.0], [1.0]], [5.0], ["minimize"]) == pytest.approx(4.0)
    assert pareto.hypervolume([], [5.0], ["minimize"]) == 0.0
    # 2-D: a point outside the reference box adds nothing; a dominated point adds nothing
    assert pareto.hypervolume([[1, 3], [2, 2], [3, 1], [5, 0], [3, 3]], [4, 4], ["minimize"] * 2) == pytest.approx(6.0)
    # 2-D, points ordered against x: (1, 1) alone covers [1, 4] x [1, 4] = 9
    assert pareto.hypervolume([[3, 2], [1, 1]], [4, 4], ["minimize"] * 2) == pytest.approx(9.0)
    # 3-D: one box, 1 x 2 x 3
    assert pareto.hypervolume([[1, 0, -1]], [2, 2, 2], ["minimize"] * 3) == pytest.approx(6.0)
    # 3-D: boxes [0,2]x[0,2]x[1,2] (4) and [1,2]x[1,2]x[0,2] (2) overlap in [1,2]^3 (1): 5
    assert pareto.hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2], ["minimize"] * 3) == pytest.approx(5.0)
    # 3-D, three points: (0,1,1) -> 2x1x1 = 2; (1,0,1) -> 1x2x1 = 2; (1,1,0) -> 1x1x2 = 2; pairwise overlaps
    # are the unit cube [1,2]^3 each, and the triple overlap is that cube too: 2+2+2 - 3*1 + 1 = 4
    assert pareto.hypervolume([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 2, 2], ["minimize"] * 3) == pytest.approx(4.0)
    # the same with the last objective maximized (mirror z -> -z, reference -2)
    assert pareto.hypervolume([[0, 1, -1], [1, 0, -1], [1, 1, 0]], [2, 2, -2],
                              ["minimize", "minimize", "maximize"]) == pytest.approx(4.0)
    # duplicates count once
    assert pareto.hypervolume([[0, 0, 1], [0, 0, 1], [1, 1, 0]], [2, 2, 2], ["minimize"] * 3) == pytest.approx(5.0)


def test_hypervolume_4d_matches_grid_count() -> None:
    rng = np.random.default_rng(3)
    points = rng.integers(0, 4, size=(6, 4)).astype(float) / 4
    ref = np.ones(4)
    assert pareto.hypervolume(points, ref, ["minimize"] * 4) == pytest.approx(brute_force_hv(points, ref, grid=8), abs=1e-9)


def test_default_reference_is_the_nadir_pushed_out_by_the_margin() -> None:
    assert pareto.default_reference([[1.0, 5.0], [3.0, 2.0]], ["minimize", "minimize"]) == pytest.approx([3.2, 5.3])
    assert pareto.default_reference([[1.0, 5.0], [3.0, 2.0]], ["minimize", "maximize"]) == pytest.approx([3.2, 1.7])
    assert pareto.default_reference([[1.0, 5.0], [1.5, 2.0]], ["minimize", "minimize"]) == pytest.approx([1.55, 5.3])
    # no spread in an objective: pushed out by margin * (|worst| + 1)
    assert pareto.default_reference([[2.0, 5.0], [2.0, 3.0]], ["minimize", "minimize"], margin=0.5) == pytest.approx([3.5, 6.0])


def test_normalized_hypervolume_scales_each_objective() -> None:
    # a zero span counts as 1: the objective is then only shifted
    hv = pareto.normalized_hypervolume([[1.0, 0.5]], ideal=[0.0, 0.0], reference=[4.0, 0.0], directions=["minimize"] * 2)
    assert hv == pytest.approx(0.75 * 0.5)  # (0.25, 0.5) under the unit reference
    hv = pareto.normalized_hypervolume([[1.0, 3.0]], ideal=[0.0, 4.0], reference=[4.0, 0.0], directions=["minimize", "maximize"])
    assert hv == pytest.approx(0.75 * 0.75)


def test_knee_point_indexes_the_input_not_the_front() -> None:
    points = [[5.0, 5.0], [0.0, 10.0], [1.0, 1.0], [10.0, 0.0]]  # the first is dominated by (1, 1)
    assert pareto.knee_point(points, ["minimize", "minimize"]) == 2
    # maximized second objective: (10, 10) and (0, 0) are the extremes, (2, 9) the knee
    assert pareto.knee_point([[0.0, 0.0], [2.0, 9.0], [10.0, 10.0], [5.0, 1.0]], ["minimize", "maximize"]) == 1
    # one objective without spread: scaled by 1, the knee is the best in the other
    assert pareto.knee_point([[1.0, 3.0], [1.0, 2.0]], ["minimize", "minimize"]) == 1


def test_normalized_hypervolume_divides_by_spans_below_one() -> None:
    hv = pareto.normalized_hypervolume([[0.25, 0.25]], ideal=[0.0, 0.0], reference=[0.5, 0.5], directions=["minimize"] * 2)
    assert hv == pytest.approx(0.25)  # scaled to (0.5, 0.5) under (1, 1)


def test_knee_point_scales_each_objective_by_its_own_range() -> None:
    # offset and spread differ per objective: scaled, (102, 100) is nearest the ideal (0.2, 0.1)
    assert pareto.knee_point([[100.0, 1000.0], [102.0, 100.0], [110.0, 0.0]], ["minimize", "minimize"]) == 1
    assert pareto.knee_point([[1.0, 10.0], [1.02, 1.0], [1.1, 0.0]], ["minimize", "minimize"]) == 1  # a range below 1
    # an objective without spread counts as 0 for all: the knee is decided by the others
    assert pareto.knee_point([[1.0, 5.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 5.0]], ["minimize"] * 3) == 1


def test_hypervolume_with_a_reference_that_differs_per_objective() -> None:
    assert pareto.hypervolume([[1.0, 1.0]], [3.0, 5.0], ["minimize"] * 2) == pytest.approx(2.0 * 4.0)
    assert pareto.hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0], ["minimize"] * 3) == pytest.approx(6.0)
    # (0, 0, 2) covers 1 x 2 x 1 = 2; (0.5, 1, 0) covers 0.5 x 1 x 3 = 1.5; they overlap in 0.5 x 1 x 1: 3.0
    assert pareto.hypervolume([[0.0, 0.0, 2.0], [0.5, 1.0, 0.0]], [1.0, 2.0, 3.0], ["minimize"] * 3) == pytest.approx(3.0)
    # no point inside the reference box: nothing dominated
    assert pareto.hypervolume([[5.0, 5.0]], [4.0, 4.0], ["minimize"] * 2) == 0.0
    assert pareto.hypervolume([[0.0, 5.0, 0.0]], [1.0, 4.0, 1.0], ["minimize"] * 3) == 0.0


def test_no_points_have_an_empty_front() -> None:
    assert pareto.non_dominated([], ["minimize", "minimize"]) == []
    assert pareto.non_dominated(np.empty((0, 3)), ["minimize"] * 3) == []


def test_knee_point_offsets_each_objective_by_its_own_minimum() -> None:
    # scaled: (0, 1), (0.2, 0.3), (1, 0) -> the middle one; offsetting by the overall minimum (0) would pick the last
    assert pareto.knee_point([[1000.0, 100.0], [1002.0, 30.0], [1010.0, 0.0]], ["minimize", "minimize"]) == 1
