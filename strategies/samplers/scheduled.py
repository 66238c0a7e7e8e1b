"""Scheduled sampling weights: each task's sampling weight is an expression of the training
fraction t (0 at the first step, approaching 1 at the last), written in the suite, e.g.

    sampler = { name = "scheduled", weights = { sst = "1 - 0.5 * t", quora = "1", sts = "0.5 + t" } }

p(task) is proportional to its weight at the step's t. The expressions use numbers, t, + - * / **,
parentheses and exp, log, sqrt, sin, cos, abs, min, max (strategies/expressions.py: parsed, never
`eval`ed). Tasks not named weigh 1. They are checked when the suite loads: each must be finite and
>= 0, and the weights must not all be 0, at t = 0, 0.001, ..., 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlbench.strategies.base import RandomTaskSampler
from mtlbench.strategies.expressions import ExpressionError, compile_expression
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError, nearest

CHECK_POINTS = 1001  # t = 0, 0.001, ..., 1


@register("sampler", "scheduled")
class ScheduledSampler(RandomTaskSampler):
    """One task per step, p(task) proportional to a user expression of the training fraction t."""

    varies_within_epoch = True

    @dataclass
    class Options:
        weights: dict[str, str] = field(default_factory=dict)  # task -> expression in t

        def __post_init__(self):
            if not isinstance(self.weights, dict):
                raise TypeError(f"weights: expected a table of task = 'expression in t', got {self.weights!r}")
            for task, text in self.weights.items():
                try:
                    compile_expression(text)
                except ExpressionError as error:
                    raise ValueError(f"weights.{task}: {error}") from None

    def __init__(self, options, batches_per_epoch, sizes, generator, epochs=1):
        super().__init__(options, batches_per_epoch, sizes, generator, epochs)
        for task in options.weights:
            if task not in self.tasks:
                raise UserError(f"sampler.weights: unknown task '{task}'{nearest(task, self.tasks)}; "
                                f"tasks: {', '.join(self.tasks)}")
        self.functions = {task: compile_expression(options.weights.get(task, "1")) for task in self.tasks}
        for i in range(CHECK_POINTS):
            self.task_weights(1, i / (CHECK_POINTS - 1))

    def task_weights(self, epoch, fraction):
        weights = {}
        for task, function in self.functions.items():
            try:
                weights[task] = function(fraction)
            except ExpressionError as error:
                raise UserError(f"sampler.weights.{task}: {error}") from None
            if weights[task] < 0:
                raise UserError(f"sampler.weights.{task}: {self.options.weights.get(task, '1')!r} is "
                                f"{weights[task]:g} < 0 at t = {fraction:g}")
        if not any(weights.values()):
            raise UserError(f"sampler.weights: every task's weight is 0 at t = {fraction:g}")
        return weights
