"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman & Finn (2020), "Gradient Surgery for Multi-Task
Learning", NeurIPS (Algorithm 1).

For each task i, visiting the other tasks j in a random order, when the running gradient g_i^PC
conflicts with the *original* g_j (negative inner product), remove that component:

    g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

then combine the projected gradients by sum or mean. Only the shared parameters are projected;
each task head keeps its own gradient.

Every g_i^PC stays a linear combination of the original gradients, so the algorithm runs on the
T x T Gramian: row i of a coefficient matrix W holds g_i^PC = W[i] @ G, each inner product is
W[i] @ Gram[:, j], and the result is (1^T W) @ G (divided by T for `mean`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from strategies.gradients import EPS, GradientCombiner
from strategies.registry import register

REDUCTIONS = ("sum", "mean")


def pcgrad_weights(gramian: Tensor, generator: torch.Generator | None = None,
                   reduction: str = "sum") -> Tensor:
    """Task weights w such that the PCGrad update is w @ G, from the T x T Gramian G G^T."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    # T is tiny: Python floats (float64) beat T^2 small tensor ops, and cost one device sync.
    gram = gramian.double().tolist()
    tasks = len(gram)
    coefficients = [[float(i == j) for j in range(tasks)] for i in range(tasks)]
    for i in range(tasks):
        row = coefficients[i]
        for j in torch.randperm(tasks, generator=generator).tolist():
            if j == i or gram[j][j] <= EPS:  # a zero gradient conflicts with nothing
                continue
            dot = sum(row[k] * gram[k][j] for k in range(tasks))  # g_i^PC . g_j
            if dot < 0:
                row[j] -= dot / gram[j][j]
    weights = [sum(coefficients[i][j] for i in range(tasks)) for j in range(tasks)]
    if reduction == "mean":
        weights = [w / tasks for w in weights]
    return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device)


def pcgrad(gradients: Tensor, generator: torch.Generator | None = None,
           reduction: str = "sum") -> tuple[Tensor, Tensor]:
    """The PCGrad update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = pcgrad_weights(gradients @ gradients.T, generator, reduction).to(gradients.dtype)
    return weights @ gradients, weights


@register("combiner", "pcgrad")
class PCGrad(GradientCombiner):
    """PCGrad gradient surgery (Yu et al., 2020): project away conflicting components."""

    @dataclass
    class Options:
        reduction: Literal["sum", "mean"] = "sum"

    def task_weights(self, gramian):
        return pcgrad_weights(gramian, self.generator, self.options.reduction)
