"""CAGrad: Liu, Liu, Jin, Stone & Liu (2021), "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS (Algorithm 1).

The update maximises the worst task's improvement within a ball around the average gradient g0:

    max_d min_i <g_i, d>   s.t.  ||d - g0|| <= c ||g0||.

Its dual is a problem on the simplex that needs only the Gramian A = G G^T:

    w* = argmin_{w in simplex} w^T A 1/T + c ||g0|| sqrt(w^T A w),   ||g0||^2 = mean(A),

and d = g0 + (c ||g0|| / ||g_w||) g_w with g_w = w*^T G, i.e. task weights 1/T + (c ||g0|| / ||g_w||) w*.
Scaling A scales the dual objective, so w* and the weights do not depend on the gradients' scale:
the dual is solved on A / trace(A), where its tolerances are on a unit scale. (Solved on the raw
Gramian, SLSQP's absolute tolerances stopped it at its starting point, reporting success, whenever
the largest gradient norm was below ~0.03 or above ~1e3.)
c = 0 is plain gradient descent on the average loss; the paper's experiments use c in [0.2, 0.8]
and rescale the update by 1 / (1 + c^2) (its reference code's default, kept here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register
from scipy.optimize import minimize
from torch import Tensor


def cagrad_dual(A: np.ndarray, c: float) -> tuple[callable, float]:
    """The dual objective F(w) = w^T A b + r sqrt(w^T A w) (with its gradient), and r = c ||g0||."""
    tasks = A.shape[0]
    Ab = A @ np.full(tasks, 1.0 / tasks)
    radius = c * math.sqrt(max(Ab.mean(), 0.0))

    def objective(w):
        norm = math.sqrt(max(w @ A @ w, 0.0))
        gradient = Ab + (radius * (A @ w) / norm if norm > 0 else 0.0)
        return w @ Ab + radius * norm, gradient
    return objective, radius


def cagrad_simplex_weights(A: np.ndarray, c: float, present: np.ndarray | None = None) -> np.ndarray:
    """w*, the dual's minimiser on the simplex (A trace-normalised), by SLSQP from its centre.
    Only the tasks in `present` take part: a zero gradient's improvement is 0 whatever the update,
    so it would only make the optimum non-unique (a kink of F at g_w = 0)."""
    tasks = A.shape[0]
    present = np.ones(tasks, dtype=bool) if present is None else present
    objective, _ = cagrad_dual(A, c)
    index = np.flatnonzero(present)

    def restricted(v):
        w = np.zeros(tasks)
        w[index] = v
        value, gradient = objective(w)
        return value, gradient[index]
    size = len(index)
    result = minimize(restricted, np.full(size, 1.0 / size), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * size,
                      constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones_like(v)}],
                      options={"ftol": 1e-14, "maxiter": 500})
    w = np.zeros(tasks)
    w[index] = np.clip(result.x, 0.0, None)
    return w / w.sum()


def cagrad_weights(gramian: Tensor, c: float = 0.5, rescale: bool = True, eps: float | None = None) -> Tensor:
    """Task weights (float64) of the CAGrad update `weights @ G`, from the T x T Gramian G G^T."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    gram, present = unit_gramian(gramian, eps)
    A = gram.numpy()
    tasks = A.shape[0]
    weights = np.full(tasks, 1.0 / tasks)
    _, radius = cagrad_dual(A, c)
    if radius > 0:
        w = cagrad_simplex_weights(A, c, present.numpy())
        gw_norm = math.sqrt(max(w @ A @ w, 0.0))
        if gw_norm > 0:
            weights = weights + radius / gw_norm * w
    if rescale:
        weights = weights / (1.0 + c * c)
    return torch.tensor(weights, dtype=torch.float64)


@register("combiner", "cagrad")
class CAGrad(GramianWeighting):
    """CAGrad (Liu et al., 2021): the best worst-task improvement near the average gradient."""

    @dataclass
    class Options(GramianOptions):
        c: float = 0.5  # radius of the ball around the average gradient, relative to its norm
        rescale: bool = True  # divide the update by 1 + c^2

        def __post_init__(self):
            if self.c < 0:
                raise ValueError(f"c must be >= 0, got {self.c}")

    def task_weights(self, gramian, step: StepInfo):
        return cagrad_weights(gramian, self.options.c, self.options.rescale, step.eps)
