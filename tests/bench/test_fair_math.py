"""The verdict's arithmetic on cases where the answer is known: Holm's correction, the simplex grid,
the non-dominated set and the hypervolume (at unit, tiny and huge scales, float32 and float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mtlbench.bench import front
from mtlbench.bench.verdict import holm, reference_point


def test_holm_matches_the_step_down_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_skips_nan_and_keeps_a_single_test():
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    adjusted = holm([0.01, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([0.03]) == [0.03]
    assert holm([]) == []


def test_holm_is_never_below_the_raw_p_and_never_above_bonferroni():
    rng = np.random.default_rng(0)
    p = list(rng.uniform(0, 0.2, size=30))
    for raw, adjusted in zip(p, holm(p)):
        assert raw <= adjusted <= min(1.0, 30 * raw) + 1e-15


@pytest.mark.parametrize("tasks, divisions, count", [(2, 6, 7), (3, 4, 15), (4, 3, 20), (3, 1, 3)])
def test_simplex_grid_has_every_share_once(tasks, divisions, count):
    grid = front.simplex_grid(tasks, divisions)
    assert len(grid) == len(set(grid)) == count == math.comb(divisions + tasks - 1, tasks - 1)
    assert all(sum(p) == divisions and min(p) >= 0 for p in grid)
    assert tuple([divisions] + [0] * (tasks - 1)) in grid  # the vertices are points of the front


def test_the_uniform_point_is_the_plain_sum():
    from mtlbench.bench.config import load_suite

    suite = load_suite("fair-comparison")
    points = [r for r in suite.recipes if r.front is not None]
    assert len(points) == 15
    for point in points:
        assert sum(point.combiner.options.weights.values()) == pytest.approx(3.0)
    # 4 divisions over 3 tasks has no exact uniform point; 3 divisions does: weights 1, 1, 1
    three = front.simplex_grid(3, 3)
    assert (1, 1, 1) in three


def test_non_dominated_keeps_ties_and_drops_the_dominated():
    points = [(1, 1), (2, 0), (0.5, 0.5), (1, 1), (0, 2), (1, 0.5)]
    assert front.non_dominated(points) == [0, 1, 3, 4]
    assert front.non_dominated([(3, 3, 3), (1, 2, 3), (3, 2, 1)]) == [0]
    assert front.non_dominated([]) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_hypervolume_of_known_sets_at_every_scale(dtype, scale):
    def hv(points, reference):
        cast = [[dtype(v * scale) for v in p] for p in points]
        return front.hypervolume(cast, [dtype(v * scale) for v in reference])
    assert hv([(1, 1)], (0, 0)) == pytest.approx(1.0 * scale ** 2, rel=1e-6)
    assert hv([(2, 1), (1, 2)], (0, 0)) == pytest.approx(3.0 * scale ** 2, rel=1e-6)  # 2 + 2 - 1
    assert hv([(1, 1, 1), (2, 0.5, 0.5)], (0, 0, 0)) == pytest.approx(1.25 * scale ** 3, rel=1e-6)
    assert hv([(1, 1), (0.5, 0.5)], (0, 0)) == pytest.approx(1.0 * scale ** 2, rel=1e-6)  # dominated adds none
    assert hv([(-1, 5)], (0, 0)) == 0.0  # not above the reference on every task


def test_hypervolume_agrees_with_monte_carlo_on_random_sets():
    rng = np.random.default_rng(1)
    points = rng.uniform(0.2, 1.0, size=(8, 3))
    exact = front.hypervolume(points.tolist(), [0, 0, 0])
    samples = rng.uniform(0, 1, size=(200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for p in points:
        covered |= np.all(samples <= p, axis=1)
    assert exact == pytest.approx(covered.mean(), abs=0.005)


def test_reference_point_sits_below_every_point():
    reference = reference_point([[0.5, 0.2], [0.7, 0.1], [0.6, 0.3]])
    assert reference[0] < 0.5 and reference[1] < 0.1
    assert reference == pytest.approx([0.5 - 0.01, 0.1 - 0.01])
