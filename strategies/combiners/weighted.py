"""Static linear scalarisation: sum_t w_t * L_t with fixed, user-chosen task weights (the usual
hand-tuned multi-task baseline; see e.g. Xin et al., 2022, "Do Current Multi-Task Optimization
Methods in Deep Learning Even Help?")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from mtlbench.strategies.base import Combiner
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError, nearest


@register("combiner", "weighted")
class WeightedCombiner(Combiner):
    """Weighted sum of task losses with static weights (tasks not named weigh 1.0)."""

    scalarisation = True  # the front of `mtlbench tune` sweeps its weights

    @dataclass
    class Options:
        weights: dict[str, float] = field(default_factory=dict)

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        for task, weight in options.weights.items():
            if task not in tasks:
                raise UserError(f"combiner.weights: unknown task '{task}'{nearest(task, tasks)}; tasks: {', '.join(tasks)}")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise UserError(f"combiner.weights.{task}: expected a number >= 0, got {weight!r}")
        self.weights = {task: float(options.weights.get(task, 1.0)) for task in tasks}

    def backward(self, losses, shared, task_specific, pipeline):
        torch.stack([self.weights[task] * loss for task, loss in losses.items()]).sum().backward()

    def fixed_loss_weights(self):
        return self.weights

    def summary(self):
        return {"weights": self.weights}
