"""Random loss weighting: Lin, Ye, Xu, Shi, Liu & Kwok (2022), "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR.

Each step draws fresh task weights w = softmax(z), z ~ N(0, I), and minimises sum_t w_t L_t. The
paper shows this baseline matches many tuned methods, so a method that does not beat it has not
shown an effect. A loss weighting needs no per-task gradients: one backward of the weighted loss
equals w @ G (the pure function below states it on G for comparison with other implementations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from strategies.gradients import LossWeightingCombiner
from strategies.registry import register


def rlw_weights(tasks: int, generator: torch.Generator | None = None) -> Tensor:
    """One draw of the random task weights: softmax of a standard normal vector."""
    return torch.softmax(torch.randn(tasks, generator=generator, dtype=torch.float64), 0)


def rlw(gradients: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The RLW update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = rlw_weights(gradients.shape[0], generator).to(gradients.dtype).to(gradients.device)
    return weights @ gradients, weights


@register("combiner", "rlw")
class RandomLossWeighting(LossWeightingCombiner):
    """Random loss weighting (Lin et al., 2022): softmax-normal task weights drawn every step."""

    @dataclass
    class Options:
        pass

    def loss_weights(self, losses):
        return rlw_weights(len(losses), self.generator).float()
