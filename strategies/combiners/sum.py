"""Total loss: the per-task losses are summed and back-propagated once (the CS224N report's
"total loss" method; with a single-task sampler this is plain per-task training)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.base import Combiner
from mtlbench.strategies.registry import register


@register("combiner", "sum")
class SumCombiner(Combiner):
    """Sum the task losses, one backward."""

    @dataclass
    class Options:
        pass

    def backward(self, losses, shared, task_specific, pipeline):
        torch.stack(list(losses.values())).sum().backward()

    def fixed_loss_weights(self):
        return dict.fromkeys(self.tasks, 1.0)
