"""LoRA: Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen (2022), "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR, with the `peft` library's implementation.

Every targeted linear layer of the encoder W gets a trainable low-rank update, W + (alpha / r) B A
(A: r x d_in, Gaussian-initialised, B: d_out x r, zero, so training starts from the pretrained
model); W and the rest of the encoder stay frozen, the task heads train in full. The adapters are
injected into the encoder in place (peft's `inject_adapter_in_model`), so they are the encoder's
trainable parameters: every combiner takes them as the shared set, and checkpoints hold them with
the rest of the model. `target_modules` are matched as peft matches them (a name suffix): the
default covers the attention projections (query, key, value, attention.output.dense) and the FFN
(intermediate.dense, output.dense) of a BERT-style encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError


def require_peft():
    try:
        import peft
    except ImportError as error:  # an optional extra
        raise UserError("freezing 'lora' needs the peft extra: pip install 'mtlbench[peft]'") from error
    return peft


@register("freezing", "lora")
class LoRA(FreezingSchedule):
    """LoRA adapters (Hu et al., 2022, via peft) on the encoder's projections; base frozen, heads trained."""

    @dataclass
    class Options:
        rank: int = 8  # r
        alpha: float = 16.0  # the update is scaled by alpha / r
        dropout: float = 0.0  # on the adapters' input
        target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])

        def __post_init__(self):
            if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
                raise ValueError("need rank >= 1, alpha > 0 and dropout in [0, 1)")
            if not self.target_modules:
                raise ValueError("target_modules must name at least one module")

    def __init__(self, options, model):
        super().__init__(options, model)
        peft = require_peft()
        config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                                 target_modules=list(options.target_modules), bias="none")
        peft.inject_adapter_in_model(config, model.encoder)
        model.parameters_changed()
        self.set_trainable(lambda name: self.head_task(name) is not None or "lora_" in name)
