"""IMTL: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task
Learning", ICLR: the full method, IMTL-L loss scales with IMTL-G gradient balancing (IMTL-G alone
is the `imtl_g` combiner).

IMTL-L: each task's loss is scaled by a learned e^{s_t}, with objective e^{s_t} L_t - s_t: its
minimum over s_t is at e^{s_t} L_t = 1, so every scaled loss is pulled to 1 (the gradient of s_t
is e^{s_t} L_t - 1). IMTL-G then balances the gradients of the scaled losses e^{s_t} g_t
(strategies.combiners.imtl_g): the shared update is sum_t a_t e^{s_t} g_t with equal projections on
every unit gradient; each head gets its own scaled loss's gradient (as in LibMTL's `IMTL`). The
scales are parameters of the run's optimizer (their own group, no weight decay), recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.combiners.imtl_g import imtl_g_weights
from mtlbench.strategies.gradients import GradientCombiner, StepInfo
from mtlbench.strategies.registry import register


@register("combiner", "imtl")
class IMTL(GradientCombiner):
    """IMTL (Liu et al., 2021): learned loss scales (IMTL-L) and impartial gradients (IMTL-G)."""

    @dataclass
    class Options:
        lr: float = 0.0  # learning rate of the log scales s_t; 0: the run's

        def __post_init__(self):
            if self.lr < 0:
                raise ValueError(f"lr must be >= 0, got {self.lr}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.log_scales = torch.zeros(len(tasks), requires_grad=True)

    def optimizer_groups(self, lr, device):
        self.log_scales = self.log_scales.detach().to(device).requires_grad_(True)
        return [{"params": [self.log_scales], "lr": self.options.lr or lr, "weight_decay": 0.0}]

    def objectives(self, losses, values):
        scales = torch.exp(self.log_scales.detach()[self.task_rows(list(losses))].double())
        gradient = scales * torch.stack([v.double() for v in values.values()]).to(scales.device) - 1.0
        self._log_scale_gradient(list(losses), gradient.to(self.log_scales.dtype))
        return {task: loss * scale.to(loss.dtype) for (task, loss), scale in zip(losses.items(), scales)}

    def _log_scale_gradient(self, tasks, gradient):
        """d/ds_t (e^{s_t} L_t - s_t) = e^{s_t} L_t - 1, into `.grad` (the scales' own objective)."""
        full = torch.zeros_like(self.log_scales)
        full[self.task_rows(tasks)] = gradient
        self.log_scales.grad = full if self.log_scales.grad is None else self.log_scales.grad + full

    def aggregate(self, gradients, gramian, step: StepInfo):
        weights = imtl_g_weights(gramian, step.eps)
        return weights.to(gradients.device, gradients.dtype) @ gradients, weights

    def summary(self):
        summary = super().summary()
        if summary:
            summary["loss_scales"] = dict(zip(self.tasks, torch.exp(self.log_scales.detach()).cpu().tolist()))
        return summary
