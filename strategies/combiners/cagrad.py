"""CAGrad: Liu, Liu, Jin, Stone & Liu (2021), "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS (Algorithm 1).

The update maximises the worst task's improvement within a ball around the average gradient g0:

    max_d min_i <g_i, d>   s.t.  ||d - g0|| <= c ||g0||.

Its dual is a problem on the simplex that needs only the Gramian A = G G^T:

    w* = argmin_{w in simplex} w^T A 1/T + c ||g0|| sqrt(w^T A w),   ||g0||^2 = mean(A),

and d = g0 + (c ||g0|| / ||g_w||) g_w with g_w = w*^T G, i.e. task weights 1/T + (c ||g0|| / ||g_w||) w*.
c = 0 is plain gradient descent on the average loss; the paper's experiments use c in [0.2, 0.8]
and rescale the update by 1 / (1 + c^2) (its reference code's default, kept here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from strategies.gradients import EPS, GradientCombiner
from strategies.registry import register


def cagrad_weights(gramian: Tensor, c: float = 0.5, rescale: bool = True) -> Tensor:
    """Task weights w of the CAGrad update w @ G, from the T x T Gramian G G^T."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    A = gramian.detach().double().cpu().numpy()
    tasks = A.shape[0]
    mean_weights = np.full(tasks, 1.0 / tasks)
    radius = c * math.sqrt(max(A.mean(), 0.0))  # c ||g0||
    weights = mean_weights.copy()
    if radius > 0:
        Ab = A @ mean_weights

        def objective(w):
            norm = math.sqrt(max(w @ A @ w, 0.0) + 1e-20)
            return w @ Ab + radius * norm, Ab + radius * (A @ w) / norm

        result = minimize(objective, mean_weights, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * tasks,
                          constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                          options={"ftol": 1e-12, "maxiter": 200})
        w = np.clip(result.x, 0.0, None)
        w /= w.sum()
        gw_norm = math.sqrt(max(w @ A @ w, 0.0))
        if gw_norm > EPS:
            weights = mean_weights + radius / gw_norm * w
    if rescale:
        weights = weights / (1.0 + c * c)
    return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device)


def cagrad(gradients: Tensor, c: float = 0.5, rescale: bool = True) -> tuple[Tensor, Tensor]:
    """The CAGrad update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = cagrad_weights(gradients @ gradients.T, c, rescale).to(gradients.dtype)
    return weights @ gradients, weights


@register("combiner", "cagrad")
class CAGrad(GradientCombiner):
    """CAGrad (Liu et al., 2021): the best worst-task improvement near the average gradient."""

    @dataclass
    class Options:
        c: float = 0.5  # radius of the ball around the average gradient, relative to its norm
        rescale: bool = True  # divide the update by 1 + c^2

        def __post_init__(self):
            if self.c < 0:
                raise ValueError(f"c must be >= 0, got {self.c}")

    def task_weights(self, gramian):
        return cagrad_weights(gramian, self.options.c, self.options.rescale)
