"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task
Learning", ICLR (the gradient-balancing half, IMTL-G).

The update g = sum_t a_t g_t, with sum_t a_t = 1, has equal projections on every task's unit
gradient u_t = g_t / ||g_t||: g . u_1 = g . u_t for all t. With D = [g_1 - g_t]_t and
U = [u_1 - u_t]_t (t = 2..T, as rows) the paper's closed form is

    a_{2:T} = g_1 U^T (D U^T)^{-1},   a_1 = 1 - sum_{t>=2} a_t,

and every entry of g_1 U^T and D U^T is an inner product of task gradients divided by a norm, so
the weights come from the Gramian alone. Weights may be negative, as in the paper. A singular
system (e.g. two parallel gradients) is solved in the least-squares sense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from strategies.gradients import EPS, GradientCombiner
from strategies.registry import register


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """Task weights a of the IMTL-G update a @ G, from the T x T Gramian G G^T."""
    gram = gramian.detach().double().cpu()
    tasks = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    if tasks == 1 or bool((norms <= EPS).any()):  # a zero gradient has no direction to balance
        return torch.full((tasks,), 1.0 / tasks, dtype=gramian.dtype, device=gramian.device)
    gu = gram / norms[None, :]  # gu[i, j] = g_i . u_j
    g1_U = gu[0, 0] - gu[0, 1:]  # g_1 . (u_1 - u_t)
    D_U = gu[0, 0] - gu[0, 1:][None, :] - gu[1:, 0][:, None] + gu[1:, 1:]  # (g_1 - g_i) . (u_1 - u_j)
    rest = torch.linalg.lstsq(D_U.T, g1_U[:, None]).solution[:, 0]  # a D U^T = g_1 U^T, a a row
    weights = torch.cat([1.0 - rest.sum(0, keepdim=True), rest])
    return weights.to(gramian.dtype).to(gramian.device)


def imtl_g(gradients: Tensor) -> tuple[Tensor, Tensor]:
    """The IMTL-G update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = imtl_g_weights(gradients @ gradients.T).to(gradients.dtype)
    return weights @ gradients, weights


@register("combiner", "imtl_g")
class IMTLG(GradientCombiner):
    """IMTL-G (Liu et al., 2021): the update projects equally onto every task's gradient direction."""

    @dataclass
    class Options:
        pass

    def task_weights(self, gramian):
        return imtl_g_weights(gramian)
