"""GradVac: Wang, Tsvetkov, Firat & Cao (2021), "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR (Algorithm 2).

PCGrad only acts on negative cosines; GradVac sets an adaptive target similarity per task pair,
an exponential moving average of the observed cosines (phi_hat <- (1 - beta) phi_hat + beta phi),
and whenever the cosine phi of g_i (as adjusted so far) and g_j falls below its target it adds

    g_i <- g_i + ||g_i|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                 / (||g_j|| sqrt(1 - phi_hat^2)) * g_j,

which makes cos(g_i, g_j) exactly phi_hat. Other tasks are visited in a random order, and the
adjusted gradients are summed. With every target at 0 this is PCGrad's projection. As in PCGrad,
each adjusted g_i stays a combination of the original gradients, so it runs on the Gramian.
This is the whole-model granularity; the paper also applies it per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from strategies.gradients import EPS, GradientCombiner
from strategies.registry import register


def gradvac_weights(gramian: Tensor, targets: list[list[float]], beta: float = 0.01,
                    generator: torch.Generator | None = None) -> tuple[Tensor, list[list[float]]]:
    """Task weights w of the GradVac update w @ G, and the updated T x T target similarities."""
    gram = gramian.double().tolist()
    tasks = len(gram)
    targets = [list(row) for row in targets]
    coefficients = [[float(i == j) for j in range(tasks)] for i in range(tasks)]
    for i in range(tasks):
        row = coefficients[i]
        for j in torch.randperm(tasks, generator=generator).tolist():
            if j == i or gram[j][j] <= EPS:
                continue
            norm_i = math.sqrt(max(sum(row[a] * gram[a][b] * row[b] for a in range(tasks) for b in range(tasks)), 0.0))
            if norm_i <= EPS:
                continue  # a zero gradient has no angle to adjust
            norm_j = math.sqrt(gram[j][j])
            phi = max(-1.0, min(1.0, sum(row[k] * gram[k][j] for k in range(tasks)) / (norm_i * norm_j)))
            target = targets[i][j]
            if phi < target:
                sine_target = math.sqrt(max(1.0 - target * target, 0.0))
                row[j] += (norm_i * (target * math.sqrt(1.0 - phi * phi) - phi * sine_target)
                           / (norm_j * max(sine_target, EPS)))
            targets[i][j] = (1.0 - beta) * target + beta * phi
    weights = [sum(coefficients[i][j] for i in range(tasks)) for j in range(tasks)]
    return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device), targets


def gradvac(gradients: Tensor, targets: list[list[float]], beta: float = 0.01,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, list[list[float]]]:
    """The GradVac update (n-vector), task weights and updated targets for T x n task gradients."""
    weights, targets = gradvac_weights(gradients @ gradients.T, targets, beta, generator)
    weights = weights.to(gradients.dtype)
    return weights @ gradients, weights, targets


@register("combiner", "gradvac")
class GradVac(GradientCombiner):
    """GradVac (Wang et al., 2021): steer each pair's gradient cosine to an adaptive target."""

    @dataclass
    class Options:
        beta: float = 0.01  # EMA rate of the target similarities (the paper's value)

        def __post_init__(self):
            if not 0.0 <= self.beta <= 1.0:
                raise ValueError(f"beta must be in [0, 1], got {self.beta}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.targets = [[0.0] * len(tasks) for _ in tasks]  # by task index, whatever a step holds

    def task_weights(self, gramian):
        index = [self.tasks.index(task) for task in self.step_tasks]
        targets = [[self.targets[a][b] for b in index] for a in index]
        weights, targets = gradvac_weights(gramian, targets, self.options.beta, self.generator)
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
