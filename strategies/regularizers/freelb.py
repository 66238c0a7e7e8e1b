"""FreeLB: Zhu, Cheng, Gan, Sun, Goldstein & Liu (2020), "FreeLB: Enhanced Adversarial Training for
Natural Language Understanding", ICLR (Algorithm 1).

From a small random start delta_0 (uniform, scaled by init_magnitude / sqrt(tokens x width) per
example), K ascent steps delta_t = Proj_eps(delta_{t-1} + alpha * g / ||g||) where g is the input
gradient at e + delta_{t-1}. The parameters are trained on the average loss of every visited point,
(1/K) sum_{t<K} L(e + delta_t): the "free" part is that each point's one backward yields both its
input gradient (for the next ascent step) and its parameter gradient (accumulated), so the K
points cost K forward/backward pairs. Like every regulariser here the term is added to the clean
loss (FreeLB itself drops it; with delta_0 this small the two objectives are close).
Defaults: K = 3, alpha = 0.1 and init magnitude 0.1, as in the paper's GLUE runs with BERT-base;
the paper often leaves the ball unbounded, here epsilon = 1.0 keeps it explicit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.adversarial import l2_direction, masked, project
from mtlbench.strategies.base import Regularizer, with_gradient
from mtlbench.strategies.registry import register


@register("regularizer", "freelb")
class FreeLB(Regularizer):
    """FreeLB (Zhu et al., 2020): K ascent steps whose parameter gradients are all accumulated."""

    uses_clean_graph = False  # its points are fresh forwards from the input embeddings

    @dataclass
    class Options:
        steps: int = 3
        alpha: float = 0.1
        epsilon: float = 1.0
        init_magnitude: float = 0.1
        weight: float = 1.0

        def __post_init__(self):
            if self.steps < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")
            if min(self.alpha, self.epsilon, self.init_magnitude, self.weight) < 0:
                raise ValueError("alpha, epsilon, init_magnitude and weight must be >= 0")

    def terms(self, step):
        options = self.options
        embeddings = step.input_embeddings
        mask = step.padding_mask
        real = mask.sum(1).clamp_min(1).to(embeddings.dtype) * embeddings.shape[-1]  # tokens x width
        start = torch.rand(embeddings.shape, generator=self.generator).to(embeddings) * 2 - 1
        delta = masked(start, mask) * (options.init_magnitude / real.sqrt()).view(-1, 1, 1)
        parameters = list(step.parameters)
        total, accumulated = 0.0, [None] * len(parameters)
        for _ in range(options.steps):
            point = delta.detach().requires_grad_(True)
            loss = step.loss_from_embeddings(embeddings + point)
            # One backward: the input gradient for the ascent and the parameters' (word embeddings
            # included, through `embeddings`, whose lookup the clean backward still needs).
            grads = torch.autograd.grad(loss, [point, *parameters], retain_graph=True, allow_unused=True)
            self.extra_forward_passes += 1
            self.extra_backward_passes += 1
            accumulated = [a if g is None else (g if a is None else a + g) for a, g in zip(accumulated, grads[1:])]
            total = total + loss.detach()
            delta = project(delta + options.alpha * l2_direction(grads[0], mask), mask, options.epsilon)
        mean = with_gradient(total / options.steps, parameters, [None if a is None else a / options.steps
                                                                 for a in accumulated])
        return {"adversarial": options.weight * mean}
