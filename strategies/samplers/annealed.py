"""Annealed sampling: Stickland & Murray (2019), "BERT and PALs: Projected Attention Layers for
Efficient Adaptation in Multi-Task Learning", ICML (Section 4).

Size-proportional sampling favours large tasks throughout; uniform sampling overfits small ones.
Annealed sampling moves from one to the other over training: in epoch e of E,

    p(task) proportional to size^alpha,    alpha = 1 - 0.8 (e - 1) / (E - 1),

so alpha goes from 1 (proportional) in the first epoch to 0.2 (nearly uniform) in the last.
`start` and `end` set the two ends (the paper's 1.0 and 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import RandomTaskSampler
from mtlbench.strategies.registry import register


@register("sampler", "annealed")
class AnnealedSampler(RandomTaskSampler):
    """One task per step, p(task) proportional to size^alpha, alpha annealed from 1 to 0.2 over the epochs."""

    @dataclass
    class Options:
        start: float = 1.0  # alpha in the first epoch
        end: float = 0.2  # alpha in the last epoch

        def __post_init__(self):
            if self.start < 0 or self.end < 0:
                raise ValueError(f"start and end must be >= 0, got {self.start}, {self.end}")

    def alpha(self, epoch: int) -> float:
        if self.epochs <= 1:
            return self.options.start
        return self.options.start + (self.options.end - self.options.start) * (epoch - 1) / (self.epochs - 1)

    def task_weights(self, epoch, fraction):
        alpha = self.alpha(epoch)
        return {task: float(self.sizes[task]) ** alpha for task in self.tasks}
