"""Size-proportional task sampling (e.g. Sanh et al., 2019; the multi-task RoBERTa tutorial):
each step trains one task drawn with probability proportional to its training-set size."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import RandomTaskSampler
from mtlbench.strategies.registry import register


@register("sampler", "proportional")
class ProportionalSampler(RandomTaskSampler):
    """One task per step, drawn with probability proportional to its size."""

    @dataclass
    class Options:
        pass

    def task_weights(self, epoch, fraction):
        return {task: float(self.sizes[task]) for task in self.tasks}
