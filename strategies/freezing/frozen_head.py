"""Alternating frozen heads: of the tasks named in `alternate`, one head trains while the others
are frozen, taking turns every epoch (or every N steps); the encoder and the other heads train
throughout. This is block-coordinate (alternating) optimisation of the heads, the practitioner's
answer to "when would one freeze one head while training the other?" when two objectives have
disjoint data and must not both move at once. There is no single paper for it; pair it with a
sampler that interleaves the tasks' batches (e.g. round-robin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlbench.strategies.base import StagedSchedule
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError, nearest


@register("freezing", "frozen_head")
class FrozenHead(StagedSchedule):
    """Heads of the `alternate` tasks take turns: one trains, the others stay frozen."""

    @dataclass
    class Options:
        alternate: list[str] = field(default_factory=list)  # empty: every task
        every_steps: int = 0  # 0: turns change every epoch

        def __post_init__(self):
            if self.every_steps < 0:
                raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")

    def __init__(self, options, model):
        super().__init__(options, model)
        tasks = list(model.specs)
        for task in options.alternate:
            if task not in tasks:
                raise UserError(f"freezing.alternate: unknown task '{task}'{nearest(task, tasks)}; tasks: {', '.join(tasks)}")
        self.turns = list(options.alternate) or tasks
        if len(self.turns) < 2:
            raise UserError("freezing.alternate: name at least two tasks to alternate")
        self.stage(0)

    def stage(self, stage: int) -> None:
        active = self.turns[stage % len(self.turns)]
        self.set_trainable(lambda name: self.head_task(name) in (None, active)
                           or self.head_task(name) not in self.turns)
