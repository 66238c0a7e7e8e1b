"""Gradual unfreezing: Howard & Ruder (2018), "Universal Language Model Fine-tuning for Text
Classification" (ULMFiT), ACL, Section 3.3.

Training starts with the heads and the top encoder layer (with the pooler) trainable; at every
stage one more layer below is unfrozen, top to bottom, and the embeddings last. A stage is one
epoch (the paper) or `every_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import StagedSchedule
from mtlbench.strategies.registry import register


@register("freezing", "gradual_unfreezing")
class GradualUnfreezing(StagedSchedule):
    """ULMFiT gradual unfreezing: the top layer first, one more layer per epoch (or N steps)."""

    @dataclass
    class Options:
        every_steps: int = 0  # 0: one stage per epoch

        def __post_init__(self):
            if self.every_steps < 0:
                raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")

    def __init__(self, options, model):
        super().__init__(options, model)
        self.layers = self.num_layers()
        self.stage(0)

    def stage(self, stage: int) -> None:
        """Stage s: the top s + 1 layers train; at stage L the embeddings join."""
        lowest = self.layers - 1 - stage

        def trainable(name):
            index = self.layer_index(name)
            if index is not None:
                return index >= lowest
            if self.is_embedding(name):
                return stage >= self.layers
            return True  # heads, pooler
        self.set_trainable(trainable)
