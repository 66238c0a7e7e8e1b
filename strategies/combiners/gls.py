"""Geometric loss strategy: Chennupati, Sistu, Yogamani & Rawashdeh (2019), "MultiNet++:
Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR
Workshops.

The objective is the geometric mean of the task losses, L = (prod_t L_t)^(1/T), whose gradient is
sum_t w_t dL_t with w_t = L / (T L_t): a loss weighting that favours the task whose loss is
smallest relative to the others, and whose direction does not change when one task's loss is
multiplied by a constant (the scale imbalance the paper targets). LibMTL's `GLS` backpropagates the geometric mean itself;
the update is the same. Convention here: the weights are computed in log space from losses clamped
at `floor`, so a zero loss gives a large finite weight instead of 0/0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register
from torch import Tensor


def gls_weights(losses: Tensor, floor: float = 1e-12) -> Tensor:
    """w_t = (prod_s L_s)^(1/T) / (T L_t), the gradient of the geometric mean with respect to each loss."""
    logs = torch.log(losses.clamp_min(floor))
    return torch.exp(logs.mean() - logs) / losses.numel()


@register("combiner", "gls")
class GeometricLossStrategy(LossWeightingCombiner):
    """Geometric loss strategy (Chennupati et al., 2019): minimise the geometric mean of the losses."""

    @dataclass
    class Options:
        floor: float = 1e-12  # losses below it count as it (a zero loss would make the weights 0/0)

        def __post_init__(self):
            if not 0 < self.floor < 1 or not math.isfinite(self.floor):
                raise ValueError(f"floor must be in (0, 1), got {self.floor}")

    def loss_weights(self, losses):
        return gls_weights(torch.stack([v.detach().double() for v in losses.values()]), self.options.floor)
