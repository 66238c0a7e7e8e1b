"""BitFit: Ben Zaken, Ravfogel & Goldberg (2022), "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL.

Only the encoder's bias terms train (every parameter named `bias`, LayerNorm's included, as in the
authors' code); its weights stay as pretrained. The task heads train in full.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register


@register("freezing", "bitfit")
class BitFit(FreezingSchedule):
    """BitFit (Ben Zaken et al., 2022): train the encoder's biases and the heads only."""

    @dataclass
    class Options:
        pass

    def __init__(self, options, model):
        super().__init__(options, model)
        self.set_trainable(lambda name: self.head_task(name) is not None or name.endswith(".bias"))
