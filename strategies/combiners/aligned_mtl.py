"""Aligned-MTL: Senushkin, Patakin, Kuznetsov & Konushin (2023), "Independent Component Alignment
for Multi-Task Learning", CVPR (Algorithm 1).

The task-gradient matrix G is replaced by the closest matrix whose rows are orthogonal with equal
norms, so the linear system has condition number 1. With the Gramian M = G G^T = V L V^T (rank r,
eigenvalues L), the aligned gradients are B G with

    B = s * V L^{-1/2} V^T,      (B G)(B G)^T = s^2 I on the span of the gradients,

where the scale s is the smallest singular value sqrt(min L) (the paper's choice; "median" and
"rmse" are the alternatives its code offers). The update is the sum of the aligned gradients,
i.e. task weights 1^T B. Everything is a T x T eigendecomposition of the Gramian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from strategies.gradients import GradientCombiner
from strategies.registry import register

SCALES = ("min", "median", "rmse")


def aligned_mtl_weights(gramian: Tensor, scale: str = "min") -> Tensor:
    """Task weights w of the Aligned-MTL update w @ G, from the T x T Gramian G G^T."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    gram = gramian.detach().double().cpu()
    eigenvalues, vectors = torch.linalg.eigh(gram)
    tolerance = eigenvalues.max().clamp_min(0) * gram.shape[0] * torch.finfo(gram.dtype).eps
    keep = eigenvalues > tolerance
    if not bool(keep.any()):  # every gradient is zero
        return torch.zeros(gram.shape[0], dtype=gramian.dtype, device=gramian.device)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    singular = eigenvalues.sqrt()
    s = {"min": singular.min(), "median": singular.median(), "rmse": eigenvalues.mean().sqrt()}[scale]
    B = s * (vectors / singular) @ vectors.T
    return B.sum(0).to(gramian.dtype).to(gramian.device)


def aligned_mtl(gradients: Tensor, scale: str = "min") -> tuple[Tensor, Tensor]:
    """The Aligned-MTL update (n-vector) and task weights for a T x n matrix of task gradients."""
    weights = aligned_mtl_weights(gradients @ gradients.T, scale).to(gradients.dtype)
    return weights @ gradients, weights


@register("combiner", "aligned_mtl")
class AlignedMTL(GradientCombiner):
    """Aligned-MTL (Senushkin et al., 2023): align task gradients to an orthogonal, equal-norm set."""

    @dataclass
    class Options:
        scale: Literal["min", "median", "rmse"] = "min"

    def task_weights(self, gramian):
        return aligned_mtl_weights(gramian, self.options.scale)
