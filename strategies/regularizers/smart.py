"""SMART: Jiang, He, Chen, Liu, Gao & Zhao (2020), "SMART: Robust and Efficient Fine-Tuning for
Pre-trained Natural Language Models through Principled Regularized Optimization", ACL (the
smoothness-inducing adversarial regulariser, eq. 3, and its reference implementation).

    R = max_{||delta||_inf <= eps} l_s(f(e + delta), f(e)),

with l_s the symmetric KL divergence for classification (softmax for several classes, Bernoulli
for one logit) and the squared error for regression. The max is approximated as in the paper's
code: delta starts as N(0, sigma^2) noise, takes `steps` ascent steps of size `step_size` along the
gradient of l_s, each normalised per token to L-inf norm epsilon; the term is weight * l_s at the
result. It compares predictions, not labels, so it also smooths where labels are noisy.
The proximal Bregman momentum half of SMART is an optimiser change and is not part of this term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mtlbench.strategies.adversarial import masked
from mtlbench.strategies.base import Regularizer
from mtlbench.strategies.registry import register
from mtlbench.tasks.spec import TaskKind
from torch import Tensor


def symmetric_divergence(perturbed: Tensor, clean: Tensor, kind: TaskKind, num_labels: int) -> Tensor:
    """l_s(perturbed, clean), averaged over the batch: symmetric KL or squared error."""
    if kind is TaskKind.PAIR_REGRESSION:
        return (perturbed - clean).pow(2).mean()
    if num_labels == 1:  # one logit: two-class distributions [sigmoid(-z), sigmoid(z)]
        perturbed, clean = torch.cat([-perturbed, perturbed], -1), torch.cat([-clean, clean], -1)
        p, q = F.logsigmoid(perturbed), F.logsigmoid(clean)
    else:
        p, q = F.log_softmax(perturbed, -1), F.log_softmax(clean, -1)
    return (F.kl_div(p, q, log_target=True, reduction="batchmean")
            + F.kl_div(q, p, log_target=True, reduction="batchmean"))


@register("regularizer", "smart")
class SMART(Regularizer):
    """SMART (Jiang et al., 2020): smoothness-inducing adversarial regulariser on the predictions."""

    @dataclass
    class Options:
        epsilon: float = 1e-5  # per-token L-inf size of the perturbation (the paper's code)
        noise_std: float = 1e-5  # sigma of the starting noise
        step_size: float = 1e-3
        steps: int = 1
        weight: float = 1.0  # lambda_s

        def __post_init__(self):
            if self.steps < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")
            if min(self.epsilon, self.noise_std, self.step_size, self.weight) < 0:
                raise ValueError("epsilon, noise_std, step_size and weight must be >= 0")

    def divergence(self, step, perturbed: Tensor, clean: Tensor) -> Tensor:
        return symmetric_divergence(perturbed, clean, step.spec.kind, step.spec.num_labels)

    def terms(self, step):
        options = self.options
        embeddings, mask = step.input_embeddings, step.padding_mask
        clean = step.logits.detach()
        noise = torch.randn(embeddings.shape, generator=self.generator).to(embeddings)
        delta = masked(noise, mask) * options.noise_std
        for _ in range(options.steps):
            point = delta.detach().requires_grad_(True)
            divergence = self.divergence(step, step.outputs_from_embeddings(embeddings.detach() + point)[1], clean)
            gradient = torch.autograd.grad(divergence, point)[0]
            self.extra_forward_passes += 1
            self.extra_backward_passes += 1
            if not torch.isfinite(gradient).all():  # the reference code gives up on this batch
                return {}
            delta = delta + options.step_size * gradient
            delta = masked(delta / delta.abs().amax(-1, keepdim=True).clamp_min(1e-12), mask) * options.epsilon
        perturbed = step.outputs_from_embeddings(embeddings + delta.detach())[1]
        self.extra_forward_passes += 1
        self.extra_backward_passes += 1
        # The paper's R_s: gradients flow through both the perturbed and the clean predictions.
        return {"smoothness": options.weight * self.divergence(step, perturbed, step.logits)}
