"""Frozen backbone: the encoder is a fixed feature extractor and only the task heads train (the
"feature-based" setting of Devlin et al., 2019, "BERT", Section 5.3; Peters, Ruder & Smith, 2019,
"To Tune or Not to Tune?")."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register


@register("freezing", "frozen_backbone")
class FrozenBackbone(FreezingSchedule):
    """Train the task heads only; the encoder stays exactly as pretrained."""

    @dataclass
    class Options:
        pass

    def __init__(self, options, model):
        super().__init__(options, model)
        self.set_trainable(lambda name: self.head_task(name) is not None)
