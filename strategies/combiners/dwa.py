"""Dynamic Weight Average: Liu, Johns & Davison (2019), "End-to-End Multi-Task Learning with
Attention", CVPR (Section 3.3).

A task's weight follows the rate at which its loss falls, measured on the average training loss of
the last two epochs:

    w_t(k) = T exp(r_t(k-1) / tau) / sum_i exp(r_i(k-1) / tau),    r_t(k-1) = L_t(k-1) / L_t(k-2),

so a task whose loss fell least gets the most weight; tau (2 in the paper) softens the weights, and
they sum to T. The first two epochs use w = 1. The epoch averages are of the losses the combiner
receives (regularisers' terms included), summed on the device and read once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register


def dwa_weights(previous: torch.Tensor, before: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """The DWA weights from two epochs' mean losses (a task whose earlier mean is 0 counts as unchanged)."""
    ratios = torch.where(before > 0, previous / torch.where(before > 0, before, 1.0), 1.0)
    return len(ratios) * torch.softmax(ratios / temperature, 0)


@register("combiner", "dwa")
class DynamicWeightAverage(LossWeightingCombiner):
    """DWA (Liu et al., 2019): weigh each task by how slowly its epoch loss fell."""

    @dataclass
    class Options:
        temperature: float = 2.0

        def __post_init__(self):
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.epoch_means: list[dict[str, float]] = []  # mean loss per task of each finished epoch
        self._sums: dict[str, torch.Tensor] = {}
        self._counts = dict.fromkeys(tasks, 0)

    def on_epoch_start(self, epoch):
        if any(self._counts.values()):
            self.epoch_means.append({task: float(self._sums[task]) / count
                                     for task, count in self._counts.items() if count})
        self._sums, self._counts = {}, dict.fromkeys(self.tasks, 0)

    def loss_weights(self, losses):
        for task, loss in losses.items():
            self._sums[task] = self._sums.get(task, 0.0) + loss.detach()
            self._counts[task] += 1
        if len(self.epoch_means) < 2:
            return torch.ones(len(losses), dtype=torch.float64)
        previous, before = self.epoch_means[-1], self.epoch_means[-2]
        return dwa_weights(torch.tensor([previous.get(t, 0.0) for t in losses], dtype=torch.float64),
                           torch.tensor([before.get(t, 0.0) for t in losses], dtype=torch.float64),
                           self.options.temperature)

    def summary(self):
        summary = super().summary()
        if summary:
            summary["epoch_mean_losses"] = self.epoch_means
        return summary
