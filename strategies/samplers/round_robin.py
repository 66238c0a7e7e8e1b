"""Round-robin task scheduling, as in the CS224N multi-task report (Table 2, left).

Cycle over the tasks, one update per task batch, skipping tasks whose batches are used up, until
every task's batches of the epoch are used.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import Sampler
from mtlbench.strategies.registry import register


@register("sampler", "round_robin")
class RoundRobinSampler(Sampler):
    """Cycle the tasks, one update per batch, until every task's batches are used."""

    @dataclass
    class Options:
        pass

    def steps_per_epoch(self) -> int:
        return sum(self.batches_per_epoch.values())

    def epoch(self, number=1):
        remaining = dict(self.batches_per_epoch)
        while any(remaining.values()):
            for task in self.tasks:
                if remaining[task]:
                    remaining[task] -= 1
                    yield (task,)
