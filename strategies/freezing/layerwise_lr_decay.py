"""Layer-wise learning-rate decay: Howard & Ruder (2018), "ULMFiT" ("discriminative fine-tuning"),
and Clark et al. (2020), "ELECTRA"; also Sun et al. (2019), "How to Fine-Tune BERT for Text
Classification?".

Each parameter's learning rate is base * decay^depth, depth counted from the top: the heads and
pooler 0, encoder layer i (of L) L - i, the embeddings L + 1. Nothing is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register


@register("freezing", "layerwise_lr_decay")
class LayerwiseLRDecay(FreezingSchedule):
    """Learning rate base * decay^(depth from the top) per layer; everything trains."""

    @dataclass
    class Options:
        decay: float = 0.9

        def __post_init__(self):
            if not 0.0 < self.decay <= 1.0:
                raise ValueError(f"decay must be in (0, 1], got {self.decay}")

    def __init__(self, options, model):
        super().__init__(options, model)
        self.layers = self.num_layers()

    def depth(self, name: str) -> int:
        index = self.layer_index(name)
        if index is not None:
            return self.layers - index
        return self.layers + 1 if self.is_embedding(name) else 0

    def lr_scale(self, name):
        return self.options.decay ** self.depth(name)
