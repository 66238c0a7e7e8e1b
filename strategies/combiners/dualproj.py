"""DualProj: the mean gradient projected onto the dual cone of the task gradients, TorchJD's
`DualProj` aggregator (Quinton & Rey, 2024, "Jacobian Descent for Multi-Objective Optimization",
arXiv:2406.16232), after Equation 11 of Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for
Continual Learning", NeurIPS.

The update is the point of the cone {x : g_j . x >= 0 for every j} closest to the mean gradient,
so it conflicts with no task and is the mean when none conflicts. As for UPGrad, the projection of
G^T u is G^T v with v = argmin_{v >= u} v^T (G G^T) v, solved exactly on G G^T / trace by
non-negative least squares (strategies.combiners.upgrad); here u = 1/T. UPGrad projects each
gradient and averages; DualProj averages, then projects once. TorchJD regularises the normalised
Gramian by 1e-4 * I; this solves the unregularised problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mtlbench.strategies.combiners.upgrad import dual_cone_projection_weights
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, unit_gramian
from mtlbench.strategies.registry import register


def dualproj_weights(gramian: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Task weights (float64) of the DualProj update `weights @ G`, from the T x T Gramian. A zero
    gradient constrains nothing: the cone is the others', and its weight (1/T) multiplies zero."""
    gram, present = unit_gramian(gramian, eps)
    tasks, present = gram.shape[0], present.numpy()
    weights = np.full(tasks, 1.0 / tasks)
    if present.any():
        index = np.flatnonzero(present)
        weights[index] = dual_cone_projection_weights(gram.numpy()[np.ix_(index, index)], weights[index])
    return torch.tensor(weights, dtype=torch.float64)


@register("combiner", "dualproj")
class DualProj(GramianWeighting):
    """DualProj (TorchJD): the mean gradient projected onto the dual cone of the task gradients."""

    @dataclass
    class Options(GramianOptions):
        pass

    def task_weights(self, gramian, step: StepInfo):
        return dualproj_weights(gramian, step.eps)
