"""ExcessMTL: He, Zhou, Chang, Yang & Zhang (2024), "Robust Multi-Task Learning with Excess
Risks", ICML.

Tasks are weighted by their *excess* risk (distance to their own optimum), not their loss, so a
task with irreducible noise does not take the weight. Each task's excess risk is estimated with a
diagonal (AdaGrad) Hessian approximation, E_t ~ g_t^T H_t^-1 g_t with H_t = sqrt(sum of g_t^2 over
the steps so far) (Equations 6-7), divided by its value at the start (scale processing, Section
3.2), and the weights take an exponentiated-gradient step on the simplex (Equation 9):
w <- softmax(log w + eta E). The update is w @ G. The state holds a T x n sum of squared gradients.

Conventions (docs/combiners.md): weights start uniform (1/T, the paper's simplex; the authors' code
and LibMTL start at 1). With `warmup_steps` = 0 the first step's excess risks are the baseline (so
its scaled excess is 1 for every task); with k > 0 the baseline is their mean over k steps of
uniform weights (Appendix C.1), which is exactly TorchJD's. No epsilon enters (TorchJD and the
authors add 1e-7 under the square root and to the baseline), so the weights do not depend on the
gradients' scale; a coordinate never seen non-zero contributes 0, a zero baseline gives ratio 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GradientCombiner, StepInfo
from mtlbench.strategies.registry import register
from torch import Tensor


def excess_risks(gradients: Tensor, squared_sums: Tensor) -> Tensor:
    """g_t^T diag(sqrt(S_t))^-1 g_t per row (float64), S the running sums of squared gradients."""
    squares = gradients.double() ** 2
    roots = squared_sums.double().sqrt()
    return torch.where(roots > 0, squares / torch.where(roots > 0, roots, 1.0), 0.0).sum(1)


@register("combiner", "excess_mtl")
class ExcessMTL(GradientCombiner):
    """ExcessMTL (He et al., 2024): weights follow each task's estimated excess risk."""

    @dataclass
    class Options:
        robust_step_size: float = 1.0  # eta of the exponentiated-gradient step (TorchJD's default)
        warmup_steps: int = 0  # steps of uniform weights whose mean excess risk is the baseline

        def __post_init__(self):
            if not (self.robust_step_size > 0 and math.isfinite(self.robust_step_size)):
                raise ValueError(f"robust_step_size must be a positive number, got {self.robust_step_size}")
            if self.warmup_steps < 0:
                raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.squared_sums: Tensor | None = None  # T x n, rows in the run's task order
        self.log_weights = torch.full((len(tasks),), -math.log(len(tasks)), dtype=torch.float64)
        self.baseline_sums = torch.zeros(len(tasks), dtype=torch.float64)
        self.baseline: Tensor | None = None
        self.step_count = 0

    def aggregate(self, gradients, gramian, step: StepInfo):
        rows = self.task_rows(step.tasks)
        if self.squared_sums is None:
            self.squared_sums = torch.zeros(len(self.tasks), gradients.shape[1], dtype=gradients.dtype,
                                            device=gradients.device)
        self.squared_sums[rows] += gradients ** 2
        risks = excess_risks(gradients, self.squared_sums[rows]).cpu()
        self.step_count += 1
        if self.baseline is None:
            warmup = self.options.warmup_steps
            if self.step_count <= warmup:  # uniform weights while the baseline is measured
                self.baseline_sums[rows] += risks
                return self._apply(gradients, rows)
            if warmup:
                self.baseline = self.baseline_sums / warmup
            else:
                self.baseline = self.baseline_sums.clone()
                self.baseline[rows] = risks
        base = self.baseline[rows]
        scaled = torch.where(base > 0, risks / torch.where(base > 0, base, 1.0), 0.0)
        logits = self.log_weights.clone()
        logits[rows] += self.options.robust_step_size * scaled
        self.log_weights = torch.log_softmax(logits, 0)
        return self._apply(gradients, rows)

    def _apply(self, gradients, rows):
        weights = torch.softmax(self.log_weights[rows], 0)
        return weights.to(gradients.device, gradients.dtype) @ gradients, weights
