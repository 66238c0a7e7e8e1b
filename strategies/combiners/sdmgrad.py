"""SDMGrad: Xiao, Ban & Ji (2023), "Direction-oriented Multi-objective Learning: Simple and
Provable Stochastic Algorithms", NeurIPS (Algorithm 1).

The update direction is kept near a preferred one (the mean gradient, w~ = 1/T) while improving
every task: the weights minimise (1/2) ||G^T (w + lambda w~)||^2 over the simplex, solved by
`inner_steps` of momentum SGD with projection, on A = J_1 J_2^T from two independent batches per
task (double sampling: unbiased where J_1 J_1^T is not; strategies.gradients.DoubleSampledWeighting
says how the second batch is drawn and what it costs). The update is
(w + lambda w~) / (1 + lambda) @ (J_1 + J_2) / 2, the two-batch form (the authors' code also allows
a third batch for the update: one more forward and backward per task).

A is divided by (mean_t sqrt(max(A_tt, 0)))^2 before the inner solve, as in the authors' code,
LibMTL and TorchJD (Section 6.1), which makes the inner learning rate scale-free; when no diagonal
entry is positive, by ||J_1|| ||J_2|| instead. The weights persist across steps (warm start).
TorchJD's `SDMGradWeighting` on the same A agrees exactly. Defaults are the authors' experiments':
lr 10, momentum 0.5, 20 inner steps, lambda 0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.combiners.modo import normalized_cross
from mtlbench.strategies.gradients import DoubleSampledWeighting, StepInfo, project_onto_simplex
from mtlbench.strategies.registry import register
from torch import Tensor


def sdmgrad_solve(weights: Tensor, cross: Tensor, lr: float, momentum: float, steps: int, lam: float
                  ) -> tuple[Tensor, Tensor]:
    """The inner solve from warm start `weights` on the scaled A; (the new w, the update's weights)."""
    preferred = torch.full_like(weights, 1.0 / len(weights))
    velocity = None
    for _ in range(steps):
        gradient = cross @ (weights + lam * preferred)
        velocity = gradient if velocity is None else momentum * velocity + gradient
        weights = project_onto_simplex(weights - lr * velocity)
    return weights, (weights + lam * preferred) / (1.0 + lam)


def sdmgrad_scaled(cross: Tensor, first_squares: Tensor, second_squares: Tensor) -> Tensor:
    scale = float(cross.diagonal().clamp_min(0).sqrt().mean()) ** 2
    if scale > 0 and math.isfinite(scale):
        return cross / scale
    return normalized_cross(cross, first_squares, second_squares)


@register("combiner", "sdmgrad")
class SDMGrad(DoubleSampledWeighting):
    """SDMGrad (Xiao et al., 2023): double-sampled min-norm weights pulled toward the mean direction."""

    @dataclass
    class Options:
        lam: float = 0.3  # pull toward the mean direction (the paper's lambda)
        lr: float = 10.0  # inner SGD learning rate
        momentum: float = 0.5  # inner SGD momentum
        inner_steps: int = 20

        def __post_init__(self):
            if self.lam < 0 or not (self.lr > 0 and math.isfinite(self.lr)):
                raise ValueError(f"need lam >= 0 and lr > 0, got lam {self.lam}, lr {self.lr}")
            if not 0 <= self.momentum < 1 or self.inner_steps < 1:
                raise ValueError("need momentum in [0, 1) and inner_steps >= 1")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.inner_weights = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)

    def cross_weights(self, cross, first_squares, second_squares, step: StepInfo):
        rows = self.task_rows(step.tasks)
        options = self.options
        inner, weights = sdmgrad_solve(self.inner_weights[rows], sdmgrad_scaled(cross, first_squares, second_squares),
                                       options.lr, options.momentum, options.inner_steps, options.lam)
        self.inner_weights[rows] = inner
        return weights
