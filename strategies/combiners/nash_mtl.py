"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya (2022), "Multi-Task
Learning as a Bargaining Game", ICML.

The update d = sum_i alpha_i g_i is the Nash bargaining solution among the tasks: the alpha > 0
with

    (G G^T) alpha = 1 / alpha   (element-wise),

so every task's directional derivative g_i . d = 1 / alpha_i (the paper's Claim 3.1). The system
is the stationarity condition of the strictly convex problem

    min_{alpha > 0}  1/2 alpha^T K alpha - sum_i log alpha_i,

which this module solves by damped Newton (the objective is self-concordant, so the damped steps
stay in alpha > 0 and converge globally, then quadratically). The authors' code instead runs up to
20 convex-concave iterations of cvxpy/ECOS, stopping when ||K alpha - 1/alpha|| < 1e-3.

Scale: as in the authors' code, alpha is solved on K = G G^T / ||G G^T||_F and applied to the raw
gradients, so the weights do not depend on the gradients' scale and the update scales with them.
The problem has a solution unless some non-negative combination of the gradients is zero, i.e.
the point is Pareto-stationary (e.g. exactly opposed gradients): no update improves every task,
and the update is 0. That is decided at the gradients' precision (the min-norm point of their
convex hull, within sqrt(eps) of the gradients' size). A zero gradient cannot bargain (g_i . d = 0 for every d): it gets weight 0 and the others
bargain among themselves. The authors' code also clips the shared gradient to norm 1; the trainer's
`max_grad_norm` clips every gradient, so no second clip is made here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.combiners.mgda import min_norm_weights
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register
from torch import Tensor

MAX_NEWTON_STEPS = 500


def nash_bargaining(K: Tensor, tolerance: float = 1e-24) -> Tensor:
    """alpha > 0 minimising 1/2 alpha^T K alpha - sum log alpha, by damped Newton (K such that the
    problem is bounded: no non-negative combination of the gradients is zero)."""
    alpha = 1.0 / K.diagonal().sqrt()  # exact for orthogonal gradients
    alpha = alpha * (len(alpha) / (alpha @ K @ alpha)) ** 0.5  # the best multiple of it
    for _ in range(MAX_NEWTON_STEPS):
        gradient = K @ alpha - 1.0 / alpha
        hessian = K + torch.diag(1.0 / alpha ** 2)
        step = torch.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)  # Newton decrement squared: affine-invariant
        if decrement <= tolerance:
            break
        alpha = alpha - step / (1.0 + decrement ** 0.5)  # damped: stays positive, converges globally
    return alpha


def nash_mtl_weights(gramian: Tensor, eps: float | None = None) -> Tensor:
    """Task weights alpha (float64) of the Nash-MTL update alpha @ G, from the T x T Gramian."""
    eps = torch.finfo(gramian.dtype).eps if eps is None else eps
    gram, present = unit_gramian(gramian, eps)
    weights = torch.zeros(gram.shape[0], dtype=torch.float64)
    if not bool(present.any()):
        return weights
    K = gram[present][:, present]
    hull = min_norm_weights(K)
    if float(hull @ K @ hull) <= eps * float(K.diagonal().mean()):
        return weights  # Pareto-stationary at the gradients' precision: no update helps every task
    weights[present] = nash_bargaining(K / torch.linalg.matrix_norm(K))  # the authors' G G^T / ||G G^T||_F
    return weights


@register("combiner", "nash_mtl")
class NashMTL(GramianWeighting):
    """Nash-MTL (Navon et al., 2022): the tasks' Nash bargaining solution, G G^T alpha = 1 / alpha."""

    @dataclass
    class Options(GramianOptions):
        pass

    def task_weights(self, gramian, step: StepInfo):
        return nash_mtl_weights(gramian, step.eps)
