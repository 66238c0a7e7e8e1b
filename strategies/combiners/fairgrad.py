"""FairGrad: Ban & Ji (2024), "Fair Resource Allocation in Multi-Task Learning", ICML.

Each task's utility is its gradient's inner product with the update, g_t . d, and the update
maximises the alpha-fair sum of utilities. With d = sum_t w_t g_t its optimality condition is the
paper's Equation 4,

    G G^T w = w^(-1/alpha)  (elementwise),   w > 0,

alpha = 0 being the linear scalarisation (uniform weights), alpha = 1 proportional fairness (the
Nash-MTL condition) and alpha -> infinity max-min fairness. The authors (and TorchJD) solve the
equation with scipy's `least_squares` on the raw Gramian; here it is solved, in log weights by
the same solver to full float64 precision, on G G^T / trace. Conventions differ in length only:
for the raw Gramian the solution is c w with c = trace^(-alpha / (1 + alpha)), so the update has
the paper's direction and does not change its weights with the gradients' scale (docs/combiners.md).
A zero gradient would need an infinite weight (0 = w^(-1/alpha)): it gets weight 0 and the others
are solved among themselves. Near a Pareto-stationary point the weights grow without bound and the
utilities they balance shrink; once those are below the gradients' rounding (at their dtype's
precision) the update is zero, as MGDA's is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register
from scipy.optimize import least_squares
from torch import Tensor


def fairgrad_weights(gramian: Tensor, alpha: float, eps: float | None = None) -> Tensor:
    """Weights w > 0 (float64) with (G G^T / trace) w = w^(-1/alpha), from the T x T Gramian."""
    gram, present = unit_gramian(gramian, eps)
    weights = torch.zeros(gram.shape[0], dtype=torch.float64)
    if not bool(present.any()):
        return weights
    inner = gram[present][:, present].numpy()
    tasks = inner.shape[0]
    if alpha == 0:
        weights[present] = 1.0 / tasks
        return weights

    def residual(log_w):
        w = np.exp(log_w)
        return inner @ w - np.exp(-log_w / alpha)

    start = np.zeros(tasks)  # w = 1: the solution of the orthonormal case
    solution = least_squares(residual, start, xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200 * tasks)
    found, utilities = np.exp(solution.x), np.exp(-solution.x / alpha)
    # Without a positive solution (no direction improves every task: Pareto-stationary, by Gordan 0 is
    # in the gradients' convex hull) the weights grow without bound and the residual stays; and once the
    # utilities g_t . d = w_t^(-1/alpha) are below what rounding the gradients leaves of G w, the same
    # holds at this precision. The update is then zero, as MGDA's is there.
    eps = torch.finfo(gramian.dtype).eps if eps is None else eps
    unsolved = np.abs(solution.fun).max() > 1e-6 * utilities.min()
    if unsolved or utilities.min() <= tasks * eps * np.abs(inner).max() * found.sum():
        return weights
    weights[present] = torch.from_numpy(found)
    return weights


@register("combiner", "fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad (Ban & Ji, 2024): the alpha-fair update, G G^T w = w^(-1/alpha)."""

    @dataclass
    class Options(GramianOptions):
        alpha: float = 2.0  # fairness: 0 linear scalarisation, 1 proportional, larger nearer max-min

        def __post_init__(self):
            if not (self.alpha >= 0 and math.isfinite(self.alpha)):
                raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")

    def task_weights(self, gramian, step: StepInfo):
        return fairgrad_weights(gramian, self.options.alpha, step.eps)
