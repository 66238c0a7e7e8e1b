"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich (2018), "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML (Algorithm 1).

Learned loss weights w_t (summing to T) are moved so that each task's weighted gradient norm
G_t = ||w_t g_t|| approaches the mean norm times the task's relative inverse training rate:

    L_grad = sum_t | G_t - mean(G) r_t^alpha |,   r_t = L~_t / mean(L~),   L~_t = L_t / L_t(0),

with the targets mean(G) r_t^alpha held constant. Each step the model descends sum_t w_t L_t (the
heads included), then w takes one gradient step on L_grad and is renormalised to sum T. A task
that trains slowly (large r_t) is pushed towards a larger gradient norm; alpha sets the pull.

Our choices: g_t is the task's gradient of all shared parameters (as LibMTL; the paper uses the last
shared layer to save compute, which the Gramian makes unnecessary: its diagonal holds every norm).
L_grad is measured in units of mean(G) (divided by it, held constant), so the weights' step
`lr` does not depend on the gradients' scale; the paper tunes that rate per problem. L_t(0) is each
task's loss at its first step. Weights are kept non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, normalized
from mtlbench.strategies.registry import register
from torch import Tensor


def gradnorm_step(weights: Tensor, gramian: Tensor, loss_ratios: Tensor, alpha: float = 1.5, lr: float = 0.025) -> Tensor:
    """The weights after one GradNorm step, from the Gramian and the losses' ratios L_t / L_t(0)."""
    gram, _ = normalized(gramian)
    norms = gram.diagonal().clamp_min(0).sqrt()
    weighted = weights * norms  # G_t, in units of sqrt(trace)
    mean = weighted.mean()
    if not mean > 0:
        return weights
    rates = loss_ratios / loss_ratios.mean()
    targets = mean * rates ** alpha
    gradient = torch.sign(weighted - targets) * norms / mean  # d (L_grad / mean G) / d w_t
    updated = (weights - lr * gradient).clamp_min(0.0)
    total = updated.sum()
    return updated * (len(weights) / total) if total > 0 else torch.ones_like(weights)


@register("combiner", "gradnorm")
class GradNorm(GramianWeighting):
    """GradNorm (Chen et al., 2018): learn loss weights that equalise the tasks' training rates."""

    weights_scale_heads = True  # GradNorm re-weights whole task losses

    @dataclass
    class Options(GramianOptions):
        alpha: float = 1.5  # strength of the pull towards equal training rates (LibMTL's default)
        lr: float = 0.025  # step size of the weights on L_grad / mean(G)

        def __post_init__(self):
            if self.alpha < 0 or not self.lr > 0:
                raise ValueError(f"need alpha >= 0 and lr > 0, got alpha {self.alpha}, lr {self.lr}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.weights = torch.ones(len(tasks), dtype=torch.float64)  # the learned w, by run task order
        self.initial_losses: dict[str, float] = {}

    def task_weights(self, gramian, step: StepInfo):
        rows = self.task_rows(step.tasks)
        for task, loss in zip(step.tasks, step.losses.tolist()):
            self.initial_losses.setdefault(task, loss)
        initial = torch.tensor([self.initial_losses[t] for t in step.tasks], dtype=torch.float64)
        ratios = torch.where(initial > 0, step.losses / torch.where(initial > 0, initial, 1.0), 1.0)
        used = self.weights[rows].clone()
        self.weights[rows] = gradnorm_step(used, gramian, ratios, self.options.alpha, self.options.lr)
        return used

    def summary(self):
        summary = super().summary()
        if summary:
            summary["final_weights"] = dict(zip(self.tasks, self.weights.tolist()))
        return summary
