"""GradVac: Wang, Tsvetkov, Firat & Cao (2021), "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR (Algorithm 2).

PCGrad only acts on negative cosines; GradVac sets an adaptive target similarity per task pair,
an exponential moving average of the observed cosines (phi_hat <- (1 - beta) phi_hat + beta phi),
and whenever the cosine phi of g_i (as adjusted so far) and g_j falls below its target it adds

    g_i <- g_i + ||g_i|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                 / (||g_j|| sqrt(1 - phi_hat^2)) * g_j,

which makes cos(g_i, g_j) exactly phi_hat. Other tasks are visited in a random order, and the
adjusted gradients are summed. With every target at 0 this is PCGrad's projection. As in PCGrad,
each adjusted g_i stays a combination of the original gradients, so it runs on the Gramian, and
the coefficients are scale-free (ratios of norms and cosines). This is the whole-model
granularity; the paper also applies it per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, task_permutations, unit_gramian
from mtlbench.strategies.registry import register
from torch import Tensor

# A target cosine within this of 1 cannot be reached by adding a finite multiple of g_j.
UNREACHABLE_TARGET = 1e-9


def gradvac_weights(gramian: Tensor, targets: Sequence[Sequence[float]], beta: float = 0.01,
                    orders: Sequence[Sequence[int]] | None = None, eps: float | None = None
                    ) -> tuple[Tensor, list[list[float]]]:
    """Task weights w (float64) of the GradVac update w @ G, and the updated T x T target cosines.
    `orders[i]` is the order in which task i visits the others (default: 0, 1, ..., T-1)."""
    gram_tensor, present_tensor = unit_gramian(gramian, eps)
    present, gram = present_tensor.tolist(), gram_tensor.tolist()
    tasks = len(gram)
    orders = orders if orders is not None else [range(tasks)] * tasks
    targets = [list(row) for row in targets]
    coefficients = [[float(i == j) for j in range(tasks)] for i in range(tasks)]
    for i in range(tasks):
        row = coefficients[i]
        for j in orders[i]:
            if j == i or not present[j] or not present[i]:  # a zero gradient has no angle to adjust
                continue
            norm_i = math.sqrt(max(sum(row[a] * gram[a][b] * row[b] for a in range(tasks) for b in range(tasks)), 0.0))
            if norm_i == 0.0:
                continue
            norm_j = math.sqrt(gram[j][j])
            phi = max(-1.0, min(1.0, sum(row[k] * gram[k][j] for k in range(tasks)) / (norm_i * norm_j)))
            target = targets[i][j]
            sine_target = math.sqrt(max(1.0 - target * target, 0.0))
            if phi < target and sine_target > UNREACHABLE_TARGET:
                row[j] += norm_i * (target * math.sqrt(1.0 - phi * phi) - phi * sine_target) / (norm_j * sine_target)
            targets[i][j] = (1.0 - beta) * target + beta * phi
    weights = torch.tensor([sum(coefficients[i][j] for i in range(tasks)) for j in range(tasks)], dtype=torch.float64)
    return weights, targets


@register("combiner", "gradvac")
class GradVac(GramianWeighting):
    """GradVac (Wang et al., 2021): steer each pair's gradient cosine to an adaptive target."""

    @dataclass
    class Options(GramianOptions):
        beta: float = 0.01  # EMA rate of the target similarities (the paper's value)

        def __post_init__(self):
            if not 0.0 <= self.beta <= 1.0:
                raise ValueError(f"beta must be in [0, 1], got {self.beta}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.targets = [[0.0] * len(tasks) for _ in tasks]  # by task index, whatever a step holds

    def task_weights(self, gramian, step: StepInfo):
        index = self.task_rows(step.tasks)
        targets = [[self.targets[a][b] for b in index] for a in index]
        orders = task_permutations(self.generator, self.tasks, step.tasks)
        weights, targets = gradvac_weights(gramian, targets, self.options.beta, orders, step.eps)
        for i, a in enumerate(index):
            for j, b in enumerate(index):
                self.targets[a][b] = targets[i][j]
        return weights

    def summary(self):
        summary = super().summary()
        if summary:
            summary["final_targets"] = {f"{a}|{b}": self.targets[i][j] for i, a in enumerate(self.tasks)
                                        for j, b in enumerate(self.tasks) if i != j}
        return summary
