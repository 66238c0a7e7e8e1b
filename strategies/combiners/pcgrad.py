"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman & Finn (2020), "Gradient Surgery for Multi-Task
Learning", NeurIPS (Algorithm 1).

For each task i, visiting the other tasks j in a random order, when the running gradient g_i^PC
conflicts with the *original* g_j (negative inner product), remove that component:

    g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

then combine the projected gradients by sum or mean. Only the shared parameters are projected;
each task head keeps its own gradient.

Every g_i^PC stays a linear combination of the original gradients, so the algorithm runs on the
T x T Gramian: row i of a coefficient matrix W holds g_i^PC = W[i] @ G, each inner product is
W[i] @ Gram[:, j], and the result is (1^T W) @ G (divided by T for `mean`). The projection
coefficients are ratios of inner products, so the weights do not depend on the gradients' scale;
only an exactly zero gradient (relative to the others, at the gradients' precision) is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, task_permutations, unit_gramian
from mtlbench.strategies.registry import register
from torch import Tensor

REDUCTIONS = ("sum", "mean")


def pcgrad_coefficients(gramian: Tensor, orders: Sequence[Sequence[int]] | None = None,
                        eps: float | None = None) -> Tensor:
    """The T x T matrix W (float64) with g_i^PC = W[i] @ G, from the Gramian G G^T. `orders[i]`
    is the order in which task i visits the others (default: 0, 1, ..., T-1)."""
    gram_tensor, present_tensor = unit_gramian(gramian, eps)
    present, gram = present_tensor.tolist(), gram_tensor.tolist()  # T is tiny: Python floats (float64) beat T^2 small tensor ops
    tasks = len(gram)
    orders = orders if orders is not None else [range(tasks)] * tasks
    coefficients = [[float(i == j) for j in range(tasks)] for i in range(tasks)]
    for i in range(tasks):
        row = coefficients[i]
        for j in orders[i]:
            if j == i or not present[j]:  # a zero gradient conflicts with nothing
                continue
            dot = sum(row[k] * gram[k][j] for k in range(tasks))  # g_i^PC . g_j
            if dot < 0:
                row[j] -= dot / gram[j][j]
    return torch.tensor(coefficients, dtype=torch.float64)


def pcgrad_weights(gramian: Tensor, orders: Sequence[Sequence[int]] | None = None, reduction: str = "sum",
                   eps: float | None = None) -> Tensor:
    """Task weights w (float64) such that the PCGrad update is w @ G: 1^T W, or its mean."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weights = pcgrad_coefficients(gramian, orders, eps).sum(0)
    return weights / len(weights) if reduction == "mean" else weights


@register("combiner", "pcgrad")
class PCGrad(GramianWeighting):
    """PCGrad gradient surgery (Yu et al., 2020): project away conflicting components."""

    @dataclass
    class Options(GramianOptions):
        reduction: Literal["sum", "mean"] = "sum"

    def task_weights(self, gramian, step: StepInfo):
        orders = task_permutations(self.generator, self.tasks, step.tasks)
        return pcgrad_weights(gramian, orders, self.options.reduction, step.eps)
