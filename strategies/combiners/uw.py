"""Uncertainty weighting: Kendall, Gal & Cipolla (2018), "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR.

Each task has a learned homoscedastic noise sigma_t; with s_t = log sigma_t^2 the objective is

    sum_t 1/2 exp(-s_t) L_t + 1/2 s_t,

so a task's weight is 1/(2 sigma_t^2) and the log term keeps sigma from growing without bound: for a
fixed loss L the minimiser is s* = log L (sigma^2 = L). The paper writes 1/sigma^2 for
classification and 1/(2 sigma^2) for regression; like most implementations (LibMTL), this uses the
regression form for every task. The log-variances are parameters of the run's optimizer (its own
parameter group: `lr`, default the run's, no weight decay), recorded in the run's `strategies`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register


@register("combiner", "uw")
class UncertaintyWeighting(LossWeightingCombiner):
    """Uncertainty weighting (Kendall et al., 2018): learned log-variances weigh the task losses."""

    @dataclass
    class Options:
        init: float = 0.0  # initial log-variance s_t (weight 1/2 exp(-s_t))
        lr: float = 0.0  # learning rate of the log-variances; 0: the run's

        def __post_init__(self):
            if self.lr < 0:
                raise ValueError(f"lr must be >= 0, got {self.lr}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.log_variances = torch.full((len(tasks),), float(options.init), requires_grad=True)

    def optimizer_groups(self, lr, device):
        self.log_variances = self.log_variances.detach().to(device).requires_grad_(True)
        return [{"params": [self.log_variances], "lr": self.options.lr or lr, "weight_decay": 0.0}]

    def _of(self, losses):
        return self.log_variances[self.task_rows(losses)]

    def loss_weights(self, losses):
        return 0.5 * torch.exp(-self._of(losses))

    def penalty(self, losses):
        return 0.5 * self._of(losses).sum()

    def summary(self):
        summary = super().summary()
        if summary:
            summary["log_variances"] = dict(zip(self.tasks, self.log_variances.detach().cpu().tolist()))
        return summary
