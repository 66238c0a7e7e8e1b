"""FGSM: Goodfellow, Shlens & Szegedy (2015), "Explaining and Harnessing Adversarial Examples", ICLR.

The perturbation of the input word embeddings is r = epsilon * sign(grad_e L) on every real token
coordinate (the steepest corner of the L-inf ball), and the term added is weight * L(e + r). Its
L2 size grows with sentence length and width, so epsilon is far smaller than FGM's.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.adversarial import AdversarialRegularizer, OneStepOptions, fgsm_perturbation
from mtlbench.strategies.registry import register


@register("regularizer", "fgsm")
class FGSM(AdversarialRegularizer):
    """FGSM (Goodfellow et al., 2015): sign-of-gradient perturbation of the input embeddings."""

    @dataclass
    class Options(OneStepOptions):
        epsilon: float = 0.01  # L-inf radius

    def perturbation(self, step):
        return fgsm_perturbation(step.input_gradient(), step.padding_mask, self.options.epsilon)
