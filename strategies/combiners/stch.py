"""STCH: Lin, Zhang, Zhang, Zhang & Zhang (2024), "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML (Equation 9).

The Tchebycheff scalarisation max_t lambda_t (f_t - z_t) reaches every Pareto-optimal point but is
not smooth; its smooth version

    STCH_mu(f) = mu log sum_t exp(lambda_t (f_t - z_t) / mu)

tends to it as mu -> 0 and to the weighted mean as mu grows. Its gradient is
sum_t lambda_t softmax(lambda (f - z) / mu)_t grad f_t: a loss weighting that puts the weight on the
worst-off task, smoothly. As in the authors' multi-task code (LibMTL's `STCH`), the objectives are
log losses normalised by a nadir point, f_t = log(L_t / nadir_t), z = 0, lambda = 1, the sum times
T so that equal objectives give every task weight 1 / L_t. The nadir is each task's mean loss over the
first `warmup_steps` steps (the authors: warm-up epochs), during which the objective is sum_t log L_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register
from torch import Tensor


def stch_weights(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """d/dL_t of T mu log sum_s exp(log(L_s / nadir_s) / mu): T softmax(f / mu)_t / L_t."""
    tiny = torch.finfo(losses.dtype).tiny
    positive = losses > tiny
    objectives = torch.log(losses.clamp_min(tiny) / nadir.clamp_min(tiny))
    share = torch.softmax(objectives / mu, 0)
    return torch.where(positive, len(losses) * share / losses.clamp_min(tiny), 0.0)


@register("combiner", "stch")
class SmoothTchebycheff(LossWeightingCombiner):
    """STCH (Lin et al., 2024): the smooth Tchebycheff scalarisation of the normalised log losses."""

    @dataclass
    class Options:
        mu: float = 1.0  # smoothing: -> 0 the Tchebycheff (max), large the mean of the log losses
        warmup_steps: int = 10  # steps whose mean losses make the nadir point

        def __post_init__(self):
            if not (self.mu > 0 and math.isfinite(self.mu)):
                raise ValueError(f"mu must be a positive number, got {self.mu}")
            if self.warmup_steps < 1:
                raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.loss_sums = torch.zeros(len(tasks), dtype=torch.float64)  # over the warm-up, run's task order
        self.loss_counts = torch.zeros(len(tasks), dtype=torch.float64)
        self.nadir: Tensor | None = None

    def loss_weights(self, losses):
        values = torch.stack([v.detach() for v in losses.values()]).to("cpu", torch.float64)
        rows = self.task_rows(losses)
        if self.nadir is None:
            self.loss_sums[rows] += values
            self.loss_counts[rows] += 1
            if self.steps + 1 >= self.options.warmup_steps:
                self.nadir = self.loss_sums / self.loss_counts.clamp_min(1)
            tiny = torch.finfo(values.dtype).tiny
            return torch.where(values > tiny, 1 / values.clamp_min(tiny), 0.0)  # sum_t log L_t
        return stch_weights(values, self.nadir[rows], self.options.mu)

    def summary(self):
        summary = super().summary()
        if summary and self.nadir is not None:
            summary["nadir"] = dict(zip(self.tasks, self.nadir.tolist()))
        return summary
