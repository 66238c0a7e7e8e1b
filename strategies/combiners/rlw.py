"""Random loss weighting: Lin, Ye, Xu, Shi, Liu & Kwok (2022), "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR.

Each step draws fresh task weights w = softmax(z), z ~ N(0, I), and minimises sum_t w_t L_t. The
paper shows this baseline matches many tuned methods, so a method that does not beat it has not
shown an effect. A loss weighting needs no per-task gradients: one backward of the weighted loss
equals w @ G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register
from torch import Tensor


def rlw_weights(tasks: int, generator: torch.Generator | None = None) -> Tensor:
    """One draw of the random task weights: softmax of a standard normal vector."""
    return torch.softmax(torch.randn(tasks, generator=generator, dtype=torch.float64), 0)


@register("combiner", "rlw")
class RandomLossWeighting(LossWeightingCombiner):
    """Random loss weighting (Lin et al., 2022): softmax-normal task weights drawn every step."""

    @dataclass
    class Options:
        pass

    def loss_weights(self, losses):
        # One normal draw per task of the run, picked by name: the weights follow the tasks, not
        # the order a step lists them in.
        z = dict(zip(self.tasks, torch.randn(len(self.tasks), generator=self.generator, dtype=torch.float64)))
        return torch.softmax(torch.stack([z[task] for task in losses]), 0)
