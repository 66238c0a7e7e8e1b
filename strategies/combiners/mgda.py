"""MGDA: Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective Optimization", NeurIPS.

The update is the minimum-norm point of the convex hull of the task gradients,

    d = sum_t w_t g_t,   w = argmin_{w >= 0, sum w = 1} || sum_t w_t g_t ||^2 = w^T (G G^T) w,

a common descent direction for every task (d = 0 at a Pareto-stationary point). The problem needs
only the T x T Gramian. The paper approximates it with Frank-Wolfe (Algorithm 2), which converges
sublinearly (measured: still 0.3 % off after 5000 iterations for T = 4). With the few tasks of
multi-task learning we solve it exactly: on each candidate support S, the equality-constrained
optimum solves the KKT system [[G_S, 1], [1^T, 0]]; the best feasible (w >= 0) candidate wins.

MGDA is sensitive to gradient scale: the min-norm point leans away from large gradients. On the
quick suite the STS task (MSE on 0-5) got about 1 % of the weight and missed its quality floor.
`normalization = "l2"` solves the problem for unit-norm gradients and rescales, as the authors'
reference code allows; the update is then invariant to each loss's scale.

This is MGDA on the shared *parameters'* gradients. MGDA-UB, the paper's cheaper upper bound, would
instead differentiate with respect to the shared representation; it is not this combiner.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from strategies.gradients import EPS, GradientCombiner
from strategies.registry import register
from tasks.errors import UserError

MAX_TASKS = 12  # 2^T supports, each a (|S|+1)-square solve


def min_norm_weights(gramian: Tensor) -> Tensor:
    """Exact weights of the min-norm point of the convex hull, from the T x T Gramian."""
    gram = gramian.detach().double().cpu().numpy()
    tasks = gram.shape[0]
    if tasks > MAX_TASKS:
        raise ValueError(f"exact MGDA supports at most {MAX_TASKS} tasks, got {tasks}")
    best, best_value = np.full(tasks, 1.0 / tasks), np.inf
    for size in range(1, tasks + 1):
        for support in itertools.combinations(range(tasks), size):
            index = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(index, index)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]  # lstsq: G_S may be singular
            if solution.min() < -1e-12 or abs(solution.sum() - 1.0) > 1e-9:
                continue  # infeasible for the simplex, or an inconsistent singular system
            weights = np.zeros(tasks)
            weights[index] = np.clip(solution, 0.0, None)
            value = weights @ gram @ weights
            if value < best_value - 1e-15:
                best, best_value = weights, value
    return torch.tensor(best, dtype=gramian.dtype, device=gramian.device)


NORMALIZATIONS = ("none", "l2")


def mgda_weights(gramian: Tensor, normalization: str = "none") -> Tensor:
    """Task weights w of the MGDA update w @ G; with "l2", solved for unit-norm gradients."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "none":
        return min_norm_weights(gramian)
    norms = gramian.diagonal().clamp_min(0).sqrt().clamp_min(EPS)
    return min_norm_weights(gramian / (norms[:, None] * norms[None, :])) / norms


def mgda(gradients: Tensor, normalization: str = "none") -> tuple[Tensor, Tensor]:
    """The MGDA update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = mgda_weights(gradients @ gradients.T, normalization).to(gradients.dtype)
    return weights @ gradients, weights


@register("combiner", "mgda")
class MGDA(GradientCombiner):
    """MGDA (Sener & Koltun, 2018): the min-norm point of the convex hull of task gradients."""

    @dataclass
    class Options:
        normalization: Literal["none", "l2"] = "none"

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        if len(tasks) > MAX_TASKS:
            raise UserError(f"combiner 'mgda' solves exactly for at most {MAX_TASKS} tasks, got {len(tasks)}")

    def task_weights(self, gramian):
        return mgda_weights(gramian, self.options.normalization)
