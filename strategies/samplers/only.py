"""Single-task training inside a multi-task suite: every step uses the named task's next batch, one
pass over its batches per epoch. The other tasks' heads stay untrained but are still evaluated,
which is the CS224N report's baseline ("BERT fine-tuned on task 1 only and evaluated on all 3
tasks", Section 5.2)."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import Sampler
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError, nearest


@register("sampler", "only")
class OnlySampler(Sampler):
    """Train one named task only (the single-task baseline); every task is still evaluated."""

    @dataclass
    class Options:
        task: str = "sst"

    def __init__(self, options, batches_per_epoch, sizes, generator, epochs=1):
        super().__init__(options, batches_per_epoch, sizes, generator, epochs)
        if options.task not in self.tasks:
            raise UserError(f"sampler.task: unknown task '{options.task}'{nearest(options.task, self.tasks)}; "
                            f"tasks: {', '.join(self.tasks)}")

    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch[self.options.task]

    def epoch(self, number=1):
        for _ in range(self.steps_per_epoch()):
            yield (self.options.task,)
