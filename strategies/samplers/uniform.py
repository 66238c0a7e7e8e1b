"""Uniform task sampling: each step trains one task drawn with equal probability, whatever its size
(the T -> infinity limit of temperature sampling)."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import RandomTaskSampler
from mtlbench.strategies.registry import register


@register("sampler", "uniform")
class UniformSampler(RandomTaskSampler):
    """One task per step, every task equally likely."""

    @dataclass
    class Options:
        pass

    def task_weights(self, epoch, fraction):
        return {task: 1.0 for task in self.tasks}
