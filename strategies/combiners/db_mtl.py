"""DB-MTL: Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok (2023), "Dual-Balancing for Multi-Task
Learning", arXiv:2308.12029.

Two balancings, one per cause of imbalance:
- loss scale: each task's loss is log-transformed, so its gradient is grad L_t / L_t and a task's
  contribution no longer depends on its loss's units (MSE on 0-5 against cross-entropy);
- gradient magnitude: an exponential moving average of each task's log-loss gradient,

      h_t <- beta_k h_t + (1 - beta_k) grad log L_t,     beta_k = beta / k^sigma at step k,

  is rescaled to the largest EMA norm, and the update is sum_t (max_s ||h_s|| / ||h_t||) h_t.

The update is built from the EMA buffers, not from this step's gradients, so this is not a
Gramian weighting: the method keeps a T x n buffer (one gradient copy per task) as its state. The
rescaling factors are ratios of norms, so the update scales with the gradients; a task whose
buffer is zero gets factor 0. A loss of exactly zero has no log gradient and contributes nothing.
The record keeps the rescaling factors' trajectory. The heads get each task's log-loss gradient,
as in the authors' implementation (LibMTL), which rescales the shared gradient only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import TRAJECTORY_EVERY, GradientCombiner, StepInfo, WindowMeans
from mtlbench.strategies.registry import register
from torch import Tensor


def db_mtl_update(buffers: Tensor) -> tuple[Tensor, Tensor]:
    """The DB-MTL update from the T x n EMA buffers, and each task's rescaling factor."""
    norms = buffers.norm(dim=1)
    largest = norms.max()
    scales = torch.where(norms > 0, largest / torch.where(norms > 0, norms, 1.0), 0.0)
    return scales @ buffers, scales


@register("combiner", "db_mtl")
class DBMTL(GradientCombiner):
    """DB-MTL (Lin et al., 2023): log losses, and EMA task gradients rescaled to the largest norm."""

    @dataclass
    class Options:
        beta: float = 0.9  # EMA rate of the gradient buffers (the authors' default)
        sigma: float = 0.0  # beta decays as beta / step^sigma (the authors' default: no decay)

        def __post_init__(self):
            if not 0.0 <= self.beta < 1.0:
                raise ValueError(f"beta must be in [0, 1), got {self.beta}")
            if self.sigma < 0:
                raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.buffers: Tensor | None = None  # T x n, rows in the run's task order
        self.step_count = 0
        self.scales = WindowMeans(self.tasks, TRAJECTORY_EVERY)

    def objectives(self, losses, values):
        # d log L = dL / L with L the whole batch's loss: exact under a loss scale and when each
        # data-parallel rank holds a shard (the log of a shard's loss would not average to it).
        # A loss of exactly zero has no log gradient: factor 0, as the clamped log gave.
        factors = {task: torch.where(value > torch.finfo(value.dtype).tiny, 1 / value, 0.0)
                   for task, value in values.items()}
        return {task: loss * factors[task].to(loss.dtype) for task, loss in losses.items()}

    def aggregate(self, gradients, gramian, step: StepInfo):
        if self.buffers is None:
            self.buffers = gradients.new_zeros(len(self.tasks), gradients.shape[1])
        self.step_count += 1
        beta = self.options.beta / self.step_count ** self.options.sigma
        rows = self.task_rows(step.tasks)
        self.buffers[rows] = beta * self.buffers[rows] + (1.0 - beta) * gradients
        update, scales = db_mtl_update(self.buffers[rows])
        self.scales.add(dict(zip(step.tasks, scales.tolist())))
        return update, None

    def summary(self):
        summary = super().summary()
        if summary:
            summary["mean_gradient_scales"] = self.scales.means()
            summary["gradient_scale_trajectory"] = self.scales.as_dict()
        return summary
