"""MoDo: Chen, Fernando, Ying & Chen (2023), "Three-Way Trade-Off in Multi-Objective Learning:
Optimization, Generalization and Conflict-Avoidance", NeurIPS (Algorithm 1).

Stochastic MGDA with double sampling: per step, two independent batches per task give
A = J_1 J_2^T, an unbiased estimate of the Gramian, and the min-norm weights take one projected
gradient step,

    lambda <- Proj_simplex(lambda - gamma (A + rho I) lambda),

then the model moves along lambda @ (J_1 + J_2) / 2 (Equation 2.9b). How the second batch is drawn
and what it costs: strategies.gradients.DoubleSampledWeighting. Convention (docs/combiners.md): the
step is taken on A / (||J_1|| ||J_2||) (Frobenius norms), so that gamma means the same at every
gradient scale; TorchJD's `MoDoWeighting` takes A as given and agrees exactly when handed the same
normalised A. Defaults are TorchJD's: gamma 0.1, rho 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import DoubleSampledWeighting, StepInfo, project_onto_simplex
from mtlbench.strategies.registry import register
from torch import Tensor


def normalized_cross(cross: Tensor, first_squares: Tensor, second_squares: Tensor) -> Tensor:
    """A / (||J_1||_F ||J_2||_F) from A and the rows' squared norms of J_1 and J_2 (0 if either is 0)."""
    scale = math.sqrt(float(first_squares.sum()) * float(second_squares.sum()))
    return cross / scale if scale > 0 and math.isfinite(scale) else torch.zeros_like(cross)


def modo_step(lambdas: Tensor, cross: Tensor, gamma: float, rho: float) -> Tensor:
    return project_onto_simplex(lambdas - gamma * (cross @ lambdas + rho * lambdas))


@register("combiner", "modo")
class MoDo(DoubleSampledWeighting):
    """MoDo (Chen et al., 2023): double-sampled stochastic MGDA, one weight step per training step."""

    @dataclass
    class Options:
        gamma: float = 0.1  # step size of the weights
        rho: float = 0.1  # l2 regularisation of the weights

        def __post_init__(self):
            if not (self.gamma > 0 and math.isfinite(self.gamma)) or self.rho < 0:
                raise ValueError(f"need gamma > 0 and rho >= 0, got gamma {self.gamma}, rho {self.rho}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.lambdas = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)

    def cross_weights(self, cross, first_squares, second_squares, step: StepInfo):
        rows = self.task_rows(step.tasks)
        scaled = normalized_cross(cross, first_squares, second_squares)
        self.lambdas[rows] = modo_step(self.lambdas[rows], scaled, self.options.gamma, self.options.rho)
        return self.lambdas[rows].clone()
