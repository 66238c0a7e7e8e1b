"""Temperature-scaled task sampling (Arivazhagan et al., 2019, "Massively Multilingual Neural
Machine Translation in the Wild"): p(task) proportional to size^(1/T). T = 1 is size-proportional,
T -> infinity is uniform."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import RandomTaskSampler
from mtlbench.strategies.registry import register


@register("sampler", "temperature")
class TemperatureSampler(RandomTaskSampler):
    """One task per step, p(task) proportional to size^(1/T)."""

    @dataclass
    class Options:
        temperature: float = 2.0

        def __post_init__(self):
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def task_weights(self, epoch, fraction):
        return {task: float(self.sizes[task]) ** (1.0 / self.options.temperature) for task in self.tasks}
