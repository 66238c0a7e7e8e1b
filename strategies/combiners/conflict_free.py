"""ConFIG, conflict-free inverse gradients (registered as `conflict_free`): Liu, Chu & Thuerey (2025),
"ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR (Equation 2).

With u_t = g_t / ||g_t|| the unit gradients, the direction is the one with an equal, positive
cosine to every gradient, d = pinv(U) 1 (U the unit gradients as rows), and its length the sum of
the gradients' projections on it:

    update = (sum_t g_t . d_hat) d_hat,     d_hat = d / ||d||.

pinv(U) = U^T (U U^T)^+ and U U^T is the cosine matrix C, so d = sum_t a_t g_t with
a = D^-1 C^+ 1 (D the gradient norms), and the update is (1^T G a / a^T G a) a @ G: task weights
from the Gramian alone, ratios of inner products, so independent of the gradients' scale. C^+ cuts
eigenvalues below T * eps of the largest (numpy's and torch's pinv rule), eps of the gradients'
dtype. A zero gradient has no direction (TorchJD's nan_to_num makes its unit row zero): weight 0.
The authors' momentum variant (M-ConFIG) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register


def config_weights(gramian: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Task weights w (float64) with the ConFIG update w @ G, from the T x T Gramian."""
    gram, present = unit_gramian(gramian, eps)
    eps = torch.finfo(gramian.dtype).eps if eps is None else eps
    weights = torch.zeros(gram.shape[0], dtype=torch.float64)
    if not bool(present.any()):
        return weights
    inner = gram[present][:, present]
    norms = inner.diagonal().sqrt()
    cosine = inner / (norms[:, None] * norms[None, :])
    values, vectors = torch.linalg.eigh((cosine + cosine.T) / 2)
    keep = values > len(values) * eps * values.max()
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    a = (inverse @ torch.ones(len(values), dtype=torch.float64)) / norms
    length = (inner @ a).sum() / (a @ inner @ a)
    weights[present] = length * a
    return weights


@register("combiner", "conflict_free")
class ConFIG(GramianWeighting):
    """ConFIG, conflict-free inverse gradients (Liu et al., 2025): the equal-cosine direction, as long as the summed projections."""

    @dataclass
    class Options(GramianOptions):
        pass

    def task_weights(self, gramian, step: StepInfo):
        return config_weights(gramian, step.eps)
