"""Frozen embeddings: every encoder layer and head trains, the (word, position, type) embeddings
stay as pretrained, a common guard against drifting rare-token vectors on small data (e.g. Lee,
Tang & Lin, 2019, "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning")."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register


@register("freezing", "frozen_embeddings")
class FrozenEmbeddings(FreezingSchedule):
    """Freeze the embedding layer; everything else trains."""

    @dataclass
    class Options:
        pass

    def __init__(self, options, model):
        super().__init__(options, model)
        self.set_trainable(lambda name: not self.is_embedding(name))
