"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task
Learning", ICLR (the gradient-balancing half, IMTL-G).

The update g = sum_t a_t g_t, with sum_t a_t = 1, has equal projections on every task's unit
gradient u_t = g_t / ||g_t||: g . u_1 = g . u_t for all t. With D = [g_1 - g_t]_t and
U = [u_1 - u_t]_t (t = 2..T, as rows) the paper's closed form is

    a_{2:T} = g_1 U^T (D U^T)^{-1},   a_1 = 1 - sum_{t>=2} a_t,

and every entry of g_1 U^T and D U^T is an inner product of task gradients divided by a norm, so
the weights come from the Gramian alone; they are ratios of inner products, so solved on
G G^T / trace they do not depend on the gradients' scale. Weights may be negative, as in the paper.
A singular system (e.g. two parallel gradients) is solved in the least-squares sense. A zero
gradient has no direction to balance: the others are balanced among themselves, and it gets weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register
from torch import Tensor


def imtl_g_weights(gramian: Tensor, eps: float | None = None) -> Tensor:
    """Task weights a (float64) of the IMTL-G update a @ G, from the T x T Gramian G G^T."""
    gram, present = unit_gramian(gramian, eps)
    weights = torch.zeros(gram.shape[0], dtype=torch.float64)
    if not bool(present.any()):
        return weights
    if int(present.sum()) == 1:
        return present.to(torch.float64)
    gram = gram[present][:, present]
    norms = gram.diagonal().sqrt()
    gu = gram / norms[None, :]  # gu[i, j] = g_i . u_j
    g1_U = gu[0, 0] - gu[0, 1:]  # g_1 . (u_1 - u_t)
    D_U = gu[0, 0] - gu[0, 1:][None, :] - gu[1:, 0][:, None] + gu[1:, 1:]  # (g_1 - g_i) . (u_1 - u_j)
    rest = torch.linalg.lstsq(D_U.T, g1_U[:, None]).solution[:, 0]  # a D U^T = g_1 U^T, a a row
    weights[present] = torch.cat([1.0 - rest.sum(0, keepdim=True), rest])
    return weights


@register("combiner", "imtl_g")
class IMTLG(GramianWeighting):
    """IMTL-G (Liu et al., 2021): the update projects equally onto every task's gradient direction."""

    @dataclass
    class Options(GramianOptions):
        pass

    def task_weights(self, gramian, step: StepInfo):
        return imtl_g_weights(gramian, step.eps)
