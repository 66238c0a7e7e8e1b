"""Shared machinery of the adversarial regularisers: perturbations of the input word embeddings,
one per example, with padding positions never perturbed.

Norms are taken per example over all its (real) token embeddings, so an example's perturbation
does not depend on the batch it sits in. The gradient at the clean embeddings comes from the
step's own backward (`TaskStep.input_gradient`): an FGM step makes 2 forwards and 2 backwards.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from mtlbench.strategies.base import Regularizer, TaskStep
from torch import Tensor

EPS = 1e-12


def masked(values: Tensor, padding_mask: Tensor) -> Tensor:
    """Zero the padding positions of a [B, L, H] tensor (mask: [B, L], 1 on real tokens)."""
    return values * padding_mask.unsqueeze(-1).to(values.dtype)


def example_norms(values: Tensor) -> Tensor:
    """L2 norm of each example's [L, H] slice, shaped [B, 1, 1] for broadcasting."""
    return values.flatten(1).norm(dim=1).view(-1, *[1] * (values.dim() - 1))


def l2_direction(gradient: Tensor, padding_mask: Tensor) -> Tensor:
    """Per example, the unit-L2 direction of the gradient over the real tokens (0 for a zero gradient)."""
    gradient = masked(gradient, padding_mask)
    return gradient / example_norms(gradient).clamp_min(EPS)


def sign_direction(gradient: Tensor, padding_mask: Tensor) -> Tensor:
    return masked(gradient.sign(), padding_mask)


def fgsm_perturbation(gradient: Tensor, padding_mask: Tensor, epsilon: float) -> Tensor:
    """FGSM (Goodfellow et al., 2015): r = epsilon * sign(grad), the L-inf ball's steepest corner."""
    return epsilon * sign_direction(gradient, padding_mask)


def fgm_perturbation(gradient: Tensor, padding_mask: Tensor, epsilon: float) -> Tensor:
    """FGM (Miyato et al., 2017): r = epsilon * grad / ||grad||_2, per example."""
    return epsilon * l2_direction(gradient, padding_mask)


def project(delta: Tensor, padding_mask: Tensor, epsilon: float, norm: str = "l2") -> Tensor:
    """Project each example's perturbation onto its epsilon-ball (L2 or L-inf), padding zeroed."""
    delta = masked(delta, padding_mask)
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / example_norms(delta).clamp_min(EPS)).clamp(max=1.0)


def pgd_perturbation(gradient_at: Callable[[Tensor], Tensor], clean_gradient: Tensor, padding_mask: Tensor,
                     epsilon: float, alpha: float, steps: int, norm: str = "l2",
                     start: Tensor | None = None) -> Tensor:
    """PGD (Madry et al., 2018): `steps` ascent steps of size alpha, each projected onto the
    epsilon-ball. `clean_gradient` is the gradient at delta = 0 (used when there is no `start`);
    `gradient_at(delta)` gives it elsewhere, so the first step from 0 costs no pass."""
    direction = l2_direction if norm == "l2" else sign_direction
    delta = torch.zeros_like(clean_gradient) if start is None else project(start, padding_mask, epsilon, norm)
    gradient = clean_gradient if start is None else gradient_at(delta)
    for k in range(steps):
        delta = project(delta + alpha * direction(gradient, padding_mask), padding_mask, epsilon, norm)
        if k < steps - 1:
            gradient = gradient_at(delta)
    return delta


@dataclass
class OneStepOptions:
    """Options of a one-step attack (FGSM, FGM): its radius and the adversarial loss's weight."""

    epsilon: float
    weight: float = 1.0

    def __post_init__(self):
        if self.epsilon < 0 or self.weight < 0:
            raise ValueError(f"epsilon and weight must be >= 0, got {self.epsilon}, {self.weight}")


class AdversarialRegularizer(Regularizer):
    """Adds weight * L(e + r), the task's own loss at perturbed input embeddings, with r chosen by
    the subclass. r is detached: the term trains the model at the perturbed point, including the
    word embeddings, which stay in the graph under e."""

    uses_clean_graph = False

    @abstractmethod
    def perturbation(self, step: TaskStep) -> Tensor:
        """The [B, L, H] perturbation of the step's input embeddings."""

    def gradient_at(self, step: TaskStep, delta: Tensor) -> Tensor:
        """The task loss's gradient w.r.t. the embeddings at e + delta (one forward, one backward)."""
        point = (step.input_embeddings.detach() + delta.detach()).requires_grad_(True)
        loss = step.loss_from_embeddings(point)
        self.extra_forward_passes += 1
        self.extra_backward_passes += 1
        return torch.autograd.grad(loss, point)[0]

    def terms(self, step):
        r = self.perturbation(step).detach()
        adversarial = step.loss_from_embeddings(step.input_embeddings + r)
        self.extra_forward_passes += 1
        self.extra_backward_passes += 1  # run inside the combiner's backward
        return {"adversarial": self.options.weight * adversarial}
