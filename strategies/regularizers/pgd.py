"""PGD: Madry, Makelov, Schmidt, Tsipras & Vladu (2018), "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR.

K ascent steps on the input-embedding perturbation, each of size alpha along the normalised
gradient (L2) or its sign (L-inf), each projected back onto the epsilon-ball; the term added is
weight * L(e + r_K). The first step uses the gradient at e from the step's own backward, so K
steps cost K - 1 extra forward/backward pairs plus the adversarial forward (and its backward).
Defaults (K = 3, epsilon = 1.0, alpha = 0.3, L2) are the usual ones for BERT fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mtlbench.strategies.adversarial import AdversarialRegularizer, pgd_perturbation
from mtlbench.strategies.registry import register


@register("regularizer", "pgd")
class PGD(AdversarialRegularizer):
    """PGD (Madry et al., 2018): K projected ascent steps on the input embeddings."""

    @dataclass
    class Options:
        epsilon: float = 1.0
        alpha: float = 0.3
        steps: int = 3
        norm: Literal["l2", "linf"] = "l2"
        random_start: bool = False  # Madry et al. start uniformly in the ball; NLP practice starts at 0
        weight: float = 1.0

        def __post_init__(self):
            if self.steps < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")
            if min(self.epsilon, self.alpha, self.weight) < 0:
                raise ValueError("epsilon, alpha and weight must be >= 0")

    def perturbation(self, step):
        options = self.options
        start = None
        if options.random_start:
            shape = step.input_embeddings.shape
            start = (torch.rand(shape, generator=self.generator) * 2 - 1).to(step.input_embeddings) * options.epsilon
        return pgd_perturbation(lambda delta: self.gradient_at(step, delta), step.input_gradient(),
                                step.padding_mask, options.epsilon, options.alpha, options.steps, options.norm, start)
