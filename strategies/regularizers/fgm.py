"""FGM: Miyato, Dai & Goodfellow (2017), "Adversarial Training Methods for Semi-Supervised Text
Classification", ICLR.

The perturbation of the input word embeddings is the loss gradient scaled to L2 norm epsilon,
r = epsilon * g / ||g||_2 with g = grad_e L (per example, padding excluded), and the term added is
weight * L(e + r). The gradient at e comes from the step's own backward, so a step costs
2 forwards and 2 backwards. The default epsilon = 1.0 is the common choice for BERT fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.adversarial import AdversarialRegularizer, OneStepOptions, fgm_perturbation
from mtlbench.strategies.registry import register


@register("regularizer", "fgm")
class FGM(AdversarialRegularizer):
    """FGM (Miyato et al., 2017): L2-normalised gradient perturbation of the input embeddings."""

    @dataclass
    class Options(OneStepOptions):
        epsilon: float = 1.0  # L2 radius per example

    def perturbation(self, step):
        return fgm_perturbation(step.input_gradient(), step.padding_mask, self.options.epsilon)
