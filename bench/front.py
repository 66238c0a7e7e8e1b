"""The scalarisation front (Kurin et al., NeurIPS 2022; Xin et al., NeurIPS 2022): the static-weight
sum at every point of a grid on the task simplex is the fair reference for a multi-task method,
not the one uniform sum. Here: the grid, the non-dominated set of points, and the hypervolume a
set of points covers above a reference point. Every score is higher-is-better here (the suite's
primary metrics are; a lower-is-better one is negated by the caller)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def simplex_grid(tasks: int, divisions: int) -> list[tuple[int, ...]]:
    """Every way to share `divisions` among `tasks` (non-negative counts summing to `divisions`):
    C(divisions + tasks - 1, tasks - 1) points, vertices and the uniform point (when it lies on
    the grid) included, in a stable order."""
    if tasks < 1 or divisions < 1:
        raise ValueError("need at least one task and one division")
    points = []
    for bars in itertools.combinations(range(divisions + tasks - 1), tasks - 1):
        edges = (-1, *bars, divisions + tasks - 1)
        points.append(tuple(edges[i + 1] - edges[i] - 1 for i in range(tasks)))
    return sorted(points, reverse=True)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b on every task and better on one."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def at_least_as_good(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (equal points all kept), in input order."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume of the region each point dominates above `reference` (its union), exactly: the
    slicing method (While et al., 2006) - sort on the last objective and add the slabs, each the
    (d-1)-dimensional volume of the points above it. Points not above the reference on every
    objective add nothing."""
    kept = [tuple(p) for p in points if all(x > r for x, r in zip(p, reference))]
    if not kept:
        return 0.0
    if len(reference) == 1:
        return max(p[0] for p in kept) - reference[0]
    kept.sort(key=lambda p: p[-1], reverse=True)
    volume = 0.0
    for i, point in enumerate(kept):
        lower = kept[i + 1][-1] if i + 1 < len(kept) else reference[-1]
        height = point[-1] - lower
        if height > 0:
            volume += height * hypervolume([p[:-1] for p in kept[:i + 1]], reference[:-1])
    return volume
