"""Aligned-MTL: Senushkin, Patakin, Kuznetsov & Konushin (2023), "Independent Component Alignment
for Multi-Task Learning", CVPR (Algorithm 1).

The task-gradient matrix G is replaced by the closest matrix whose rows are orthogonal with equal
norms, so the linear system has condition number 1. With the Gramian M = G G^T = V L V^T (rank r,
eigenvalues L), the aligned gradients are B G with

    B = s * V L^{-1/2} V^T,      (B G)(B G)^T = s^2 I on the span of the gradients,

where the scale s is the smallest singular value sqrt(min L) (the paper's choice; "median" and
"rmse" are the alternatives its code offers). The update is the sum of the aligned gradients,
i.e. task weights 1^T B. Everything is a T x T eigendecomposition of the Gramian, and B is
scale-free (s over singular values), so it is computed on G G^T / trace. The rank is decided at the
precision of the gradients: an eigenvalue at or below T * eps(dtype) of the largest is rounding,
not a direction (with float64's eps on float32 gradients, an exactly rank-1 pair [g, 3g] kept its
rounding noise as a second direction in about one draw in three, and the update shrank ~10^4-fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, normalized
from mtlbench.strategies.registry import register
from torch import Tensor

SCALES = ("min", "median", "rmse")


def aligned_mtl_weights(gramian: Tensor, scale: str = "min", eps: float | None = None) -> Tensor:
    """Task weights w (float64) of the Aligned-MTL update w @ G, from the T x T Gramian G G^T.
    `eps`: machine epsilon of the gradients' dtype (default: the Gramian's)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    gram, _ = normalized(gramian)
    eps = torch.finfo(gramian.dtype).eps if eps is None else eps  # a rank cut-off, not a zero-row test
    eigenvalues, vectors = torch.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max().clamp_min(0) * gram.shape[0] * eps
    if not bool(keep.any()):  # every gradient is zero
        return torch.zeros(gram.shape[0], dtype=torch.float64)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    singular = eigenvalues.sqrt()
    s = {"min": singular.min(), "median": singular.median(), "rmse": eigenvalues.mean().sqrt()}[scale]
    B = s * (vectors / singular) @ vectors.T
    return B.sum(0)


@register("combiner", "aligned_mtl")
class AlignedMTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al., 2023): align task gradients to an orthogonal, equal-norm set."""

    @dataclass
    class Options(GramianOptions):
        scale: Literal["min", "median", "rmse"] = "min"

    def task_weights(self, gramian, step: StepInfo):
        return aligned_mtl_weights(gramian, self.options.scale, step.eps)
