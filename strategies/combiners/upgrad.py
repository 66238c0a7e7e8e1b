"""UPGrad: Quinton & Rey (2024), "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.

Each task gradient g_i is projected onto the dual cone of all task gradients,
{x : g_j . x >= 0 for every j}, and the projections are averaged. The update therefore never
conflicts with any task (g_j . d >= 0) and equals the mean gradient when no pair conflicts.

By the paper's Proposition 1, the projection of G^T u is G^T v with

    v = argmin_{v >= u} v^T (G G^T) v,

a small quadratic programme on the Gramian alone. With v = u + z (z >= 0) and any factor
A^T A = G G^T it is the non-negative least-squares problem min_{z >= 0} ||A z + A u||, which
scipy's `nnls` (Lawson-Hanson active set) solves exactly. UPGrad's weights are the mean of the v
found for u = e_i, i = 1..T. The problem is homogeneous in the Gramian's scale, so it is solved on
G G^T / trace: no regularisation and no absolute tolerance enter (torchjd's reference adds 1e-4 * I
to the normalised Gramian and returns zero below a trace of 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register
from scipy.optimize import nnls
from torch import Tensor


def dual_cone_projection_weights(gram: np.ndarray, u: np.ndarray) -> np.ndarray:
    """v with G^T v the projection of G^T u onto the dual cone of G's rows, from the Gramian."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    factor = np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * vectors.T  # factor^T factor = gram
    z, _ = nnls(factor, -factor @ u)
    return u + z


def upgrad_weights(gramian: Tensor, eps: float | None = None) -> Tensor:
    """Task weights (float64) of the UPGrad update `weights @ G`, from the T x T Gramian G G^T.
    A zero gradient constrains nothing and is its own projection, so the cone is that of the others."""
    gram, present = unit_gramian(gramian, eps)
    tasks, present = gram.shape[0], present.numpy()
    projections = np.eye(tasks)
    if present.any():
        index = np.flatnonzero(present)
        inner = gram.numpy()[np.ix_(index, index)]
        for k, i in enumerate(index):
            projections[i, index] = dual_cone_projection_weights(inner, np.eye(len(index))[k])
    return torch.tensor(projections.mean(0), dtype=torch.float64)


@register("combiner", "upgrad")
class UPGrad(GramianWeighting):
    """UPGrad (Quinton & Rey, 2024): the mean of each gradient's projection onto the dual cone."""

    @dataclass
    class Options(GramianOptions):
        pass

    def task_weights(self, gramian, step: StepInfo):
        return upgrad_weights(gramian, step.eps)
