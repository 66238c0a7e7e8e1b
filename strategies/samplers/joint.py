"""Joint ("total loss") training: every step holds one batch of every task.

The total-loss algorithm of the CS224N multi-task report (Table 2): per-task losses of one batch
each, summed (or otherwise combined) into one update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mtlbench.strategies.base import Sampler
from mtlbench.strategies.registry import register


@register("sampler", "joint")
class JointSampler(Sampler):
    """Every task in every step (total loss); epoch length balanced/min/max over tasks."""

    single_task = False

    @dataclass
    class Options:
        # balanced: as many task batches per epoch as the single-task samplers spend (fair budget);
        # min: stop when the smallest task runs out (the report's "while all batches > 0");
        # max: run until the largest task is used once (small tasks repeat).
        steps_per_epoch: Literal["balanced", "min", "max"] = "balanced"

    def steps_per_epoch(self) -> int:
        counts = self.batches_per_epoch.values()
        if self.options.steps_per_epoch == "min":
            return min(counts)
        if self.options.steps_per_epoch == "max":
            return max(counts)
        return math.ceil(sum(counts) / len(self.tasks))

    def epoch(self, number=1):
        for _ in range(self.steps_per_epoch()):
            yield tuple(self.tasks)
