"""FAMO: Liu, Feng, Stone & Liu (2023), "FAMO: Fast Adaptive Multitask Optimization", NeurIPS
(Algorithm 2).

FAMO seeks the update that decreases every task's log loss at an equal rate, without per-task
gradients. Task weights z = softmax(xi) come from learned logits xi; the model's step minimises

    sum_t z_t log(L_t - b_t + eps) / c,     c = sum_t z_t / (L_t - b_t + eps)   (held constant),

i.e. task weights w_t = z_t / (c (L_t - b_t + eps)) on the raw losses, which sum to 1. After the
optimizer step, the logits follow the observed decrease of each log loss,
delta_t = log(L_t(before) - b_t + eps) - log(L_t(after) - b_t + eps): their gradient is the
softmax's vector-Jacobian product with delta, applied by the method's own Adam (`lr`, weight decay
`gamma`), so tasks that improved least gain weight. The lower bounds b_t are 0 (losses here are
non-negative).

L_t(after) is the task's loss on the *same* batch at the updated parameters, as in the authors'
code: one more forward per task per step, without a graph, counted in the record
(`extra_forward_passes`). Before and after are the task's own losses (a regulariser's terms are
in the weighted objective, not in this comparison). Defaults are Algorithm 2's (and LibMTL's): lr 0.025, gamma 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import LossWeightingCombiner
from mtlbench.strategies.registry import register

EPSILON = 1e-8  # the paper's offset of the log losses


def famo_weights(logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """The weights on the raw losses whose gradient is FAMO's step: z_t / (c D_t)."""
    z = torch.softmax(logits, 0)
    shifted = losses + EPSILON
    return z / (shifted * (z / shifted).sum())


def famo_logit_gradient(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """d/dxi of softmax(xi) . delta, delta the decrease of each log loss over the step."""
    delta = torch.log(before + EPSILON) - torch.log(after + EPSILON)
    z = torch.softmax(logits, 0)
    return z * (delta - (z * delta).sum())


@register("combiner", "famo")
class FAMO(LossWeightingCombiner):
    """FAMO (Liu et al., 2023): learned task logits balance the decrease of every log loss."""

    @dataclass
    class Options:
        lr: float = 0.025  # Adam learning rate of the task logits
        gamma: float = 1e-3  # weight decay of the task logits (the paper's regularisation)

        def __post_init__(self):
            if not self.lr > 0 or self.gamma < 0:
                raise ValueError(f"need lr > 0 and gamma >= 0, got lr {self.lr}, gamma {self.gamma}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.logits = torch.zeros(len(tasks), dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=options.lr, weight_decay=options.gamma)
        self.extra_forward_passes = 0

    def loss_weights(self, losses):
        values = torch.stack([loss.detach() for loss in losses.values()]).to("cpu", torch.float64)
        return famo_weights(self.logits.detach()[self.task_rows(losses)], values)

    def after_step(self, losses_before, losses_after):
        after = losses_after()
        self.extra_forward_passes += len(after)
        tasks = list(losses_before)
        rows = self.task_rows(tasks)
        before = torch.stack([losses_before[t] for t in tasks]).to("cpu", torch.float64)
        gradient = torch.zeros_like(self.logits)
        gradient[rows] = famo_logit_gradient(self.logits.detach()[rows], before,
                                             torch.stack([after[t] for t in tasks]).to("cpu", torch.float64))
        self.optimizer.zero_grad()
        self.logits.grad = gradient
        self.optimizer.step()

    def summary(self):
        summary = super().summary()
        if summary:
            summary["logits"] = dict(zip(self.tasks, self.logits.detach().tolist()))
            summary["extra_forward_passes"] = self.extra_forward_passes
        return summary
