"""R-Drop: Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang & Liu (2021), "R-Drop: Regularized Dropout
for Neural Networks", NeurIPS (Equation 3).

Each batch goes through the model twice; dropout gives two different sub-models, and

    L = L_task(P_1) + L_task(P_2) + alpha (KL(P_1 || P_2) + KL(P_2 || P_1)) / 2

ties their predictions together. P_1 is the step's clean forward; this regulariser makes the second
(same input, a fresh dropout mask: the model trains in train mode), adds its task loss and the
consistency term, gradients through both passes: one extra forward and backward per task batch.
Without dropout (dropout = 0, or eval mode) the two passes agree and the term is zero. The
divergence for regression and token kinds is SMART's (strategies.regularizers.smart; squared error
for regression), which the paper does not cover. Default alpha 1.0 (the paper tunes it per task
among 0.1 ... 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import Regularizer
from mtlbench.strategies.registry import register
from mtlbench.strategies.regularizers.smart import symmetric_divergence


@register("regularizer", "rdrop")
class RDrop(Regularizer):
    """R-Drop (Liang et al., 2021): two dropout passes, their losses and their symmetric KL."""

    @dataclass
    class Options:
        alpha: float = 1.0  # weight of the consistency term

        def __post_init__(self):
            if self.alpha < 0:
                raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    def terms(self, step):
        loss, logits = step.outputs_from_embeddings(step.input_embeddings)  # a fresh dropout mask
        self.extra_forward_passes += 1
        self.extra_backward_passes += 1
        divergence = symmetric_divergence(logits, step.logits, step.spec.kind, step.spec.num_labels)
        return {"second_pass": loss, "consistency": self.options.alpha * divergence / 2}
