"""FGSM: Goodfellow, Shlens & Szegedy (2015), "Explaining and Harnessing Adversarial Examples", ICLR.

The perturbation of the input word embeddings is r = epsilon * sign(grad_e L) on every real token
coordinate (the steepest corner of the L-inf ball), and the term added is weight * L(e + r). Its
L2 size grows with sentence length and width, so epsilon is far smaller than FGM's.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.adversarial import AdversarialRegularizer, fgsm_perturbation
from strategies.registry import register


@register("regularizer", "fgsm")
class FGSM(AdversarialRegularizer):
    """FGSM (Goodfellow et al., 2015): sign-of-gradient perturbation of the input embeddings."""

    @dataclass
    class Options:
        epsilon: float = 0.01  # L-inf radius
        weight: float = 1.0

        def __post_init__(self):
            if self.epsilon < 0 or self.weight < 0:
                raise ValueError(f"epsilon and weight must be >= 0, got {self.epsilon}, {self.weight}")

    def perturbation(self, step):
        return fgsm_perturbation(step.input_gradient(), step.padding_mask, self.options.epsilon)
