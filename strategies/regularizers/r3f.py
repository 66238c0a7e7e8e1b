"""R3F: Aghajanyan, Shrivastava, Gupta, Goyal, Zettlemoyer & Gupta (2021), "Better Fine-Tuning by
Reducing Representational Collapse", ICLR (Equation 2).

    L = L_task(f(x)) + lambda KL_S(f(x) || f(x + z)),   z ~ N(0, sigma^2 I)  (or U(-sigma, sigma)),

z added to the input word embeddings (padding untouched) and KL_S the symmetric KL divergence of
the predictions; no adversarial ascent (SMART's costlier max), so one extra forward and backward
per task batch. Gradients flow through both the noised and the clean predictions, as in the
authors' fairseq code. The divergence is SMART's (strategies.regularizers.smart): symmetric KL for
classification kinds (per token for token kinds), squared error for regression, which the paper,
classification only, does not cover. Defaults are the authors' code's: sigma 1e-5, lambda 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mtlbench.strategies.adversarial import masked
from mtlbench.strategies.base import Regularizer
from mtlbench.strategies.registry import register
from mtlbench.strategies.regularizers.smart import symmetric_divergence


@register("regularizer", "r3f")
class R3F(Regularizer):
    """R3F (Aghajanyan et al., 2021): symmetric KL between clean and noised-embedding predictions."""

    @dataclass
    class Options:
        sigma: float = 1e-5  # noise scale on the input embeddings
        noise: Literal["normal", "uniform"] = "normal"
        weight: float = 1.0  # lambda

        def __post_init__(self):
            if self.sigma < 0 or self.weight < 0:
                raise ValueError(f"sigma and weight must be >= 0, got {self.sigma}, {self.weight}")

    def noise_like(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.options.noise == "normal":
            draw = torch.randn(embeddings.shape, generator=self.generator)
        else:
            draw = 2 * torch.rand(embeddings.shape, generator=self.generator) - 1
        return (self.options.sigma * draw).to(embeddings)

    def terms(self, step):
        noise = masked(self.noise_like(step.input_embeddings), step.padding_mask)
        noised = step.outputs_from_embeddings(step.input_embeddings + noise)[1]
        self.extra_forward_passes += 1
        self.extra_backward_passes += 1
        divergence = symmetric_divergence(noised, step.logits, step.spec.kind, step.spec.num_labels)
        return {"r3f": self.options.weight * divergence}
