"""MGDA: Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective Optimization", NeurIPS.

The update is the minimum-norm point of the convex hull of the task gradients,

    d = sum_t w_t g_t,   w = argmin_{w >= 0, sum w = 1} || sum_t w_t g_t ||^2 = w^T (G G^T) w,

a common descent direction for every task (d = 0 at a Pareto-stationary point). The problem needs
only the T x T Gramian, and its weights do not depend on the Gramian's scale, so it is solved on
G G^T / trace. The paper approximates it with Frank-Wolfe (Algorithm 2), which converges
sublinearly (measured: still 0.3 % off after 5000 iterations for T = 4). With the few tasks of
multi-task learning we solve it exactly: on each candidate support S, the equality-constrained
optimum solves the KKT system [[G_S, 1], [1^T, 0]]; the best feasible (w >= 0) candidate wins.

MGDA is sensitive to gradient scale: the min-norm point leans away from large gradients. On the
quick suite the STS task (MSE on 0-5) got about 1 % of the weight and missed its quality floor.
`normalization` divides each gradient by a normaliser n_t before the problem is solved, as the
authors' code does: "l2" (n_t = ||g_t||), "loss" (n_t = L_t), "loss+" (L_t ||g_t||). Two codes
differ in what the weights are then applied to, so both are offered:
- `apply_to = "normalized"`: d = sum_t w_t g_t / n_t (LibMTL's convention; with "l2" the update is
  invariant to each loss's scale);
- `apply_to = "raw"`: d = sum_t w_t g_t (Sener & Koltun's reference code: the weights scale the
  original losses).

This is MGDA on the shared *parameters'* gradients. MGDA-UB, the paper's cheaper upper bound, would
instead differentiate with respect to the shared representation; it is not this combiner.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from mtlbench.strategies.gradients import GramianOptions, GramianWeighting, StepInfo, normalized
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError
from torch import Tensor

MAX_TASKS = 12  # 2^T supports, each a (|S|+1)-square solve
# Tolerances of the exact solver, on the trace-normalised problem (entries <= 1): a unit scale.
FEASIBLE = 1e-12
CONSISTENT = 1e-9
# A candidate must beat the best so far by this much: ties (several weight vectors giving the same
# point, as when T > n) go to the smallest support found first, whatever the rounding.
BETTER = 1e-13


def min_norm_weights(gramian: Tensor) -> Tensor:
    """Exact weights (float64) of the min-norm point of the convex hull, from the T x T Gramian."""
    gram_tensor, trace = normalized(gramian)
    tasks = gram_tensor.shape[0]
    if tasks > MAX_TASKS:
        raise ValueError(f"exact MGDA supports at most {MAX_TASKS} tasks, got {tasks}")
    if trace == 0.0:  # every gradient is zero: any point of the simplex is the min-norm point
        return torch.full((tasks,), 1.0 / tasks, dtype=torch.float64)
    gram = gram_tensor.numpy()
    best, best_value = np.full(tasks, 1.0 / tasks), np.inf
    for size in range(1, tasks + 1):
        for support in itertools.combinations(range(tasks), size):
            index = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(index, index)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]  # lstsq: G_S may be singular
            if solution.min() < -FEASIBLE or abs(solution.sum() - 1.0) > CONSISTENT:
                continue  # infeasible for the simplex, or an inconsistent singular system
            weights = np.zeros(tasks)
            weights[index] = np.clip(solution, 0.0, None)
            weights /= weights.sum()
            value = weights @ gram @ weights
            if value < best_value - BETTER:
                best, best_value = weights, value
    return torch.tensor(best, dtype=torch.float64)


NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda_weights(gramian: Tensor, normalization: str = "none", apply_to: str = "normalized",
                 losses: Tensor | None = None) -> Tensor:
    """Task weights (float64) of the MGDA update `weights @ G` on the raw gradients G."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    gram = gramian.detach().to("cpu", torch.float64)
    norms = gram.diagonal().clamp_min(0).sqrt()
    if normalization in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalization {normalization!r} needs the task losses")
        losses = losses.to(torch.float64)
    divisor = {"none": torch.ones_like(norms), "l2": norms, "loss": losses,
               "loss+": None if losses is None else losses * norms}[normalization]
    usable = divisor > 0  # a zero gradient (or loss) has nothing to normalise; it keeps weight 0 below
    divisor = torch.where(usable, divisor, 1.0)
    weights = min_norm_weights(gram / (divisor[:, None] * divisor[None, :]))
    if normalization != "none":
        weights = torch.where(usable, weights, 0.0)
    return weights / divisor if apply_to == "normalized" else weights


@register("combiner", "mgda")
class MGDA(GramianWeighting):
    """MGDA (Sener & Koltun, 2018): the min-norm point of the convex hull of task gradients."""

    @dataclass
    class Options(GramianOptions):
        normalization: Literal["none", "l2", "loss", "loss+"] = "none"
        # what the weights scale: the normalised gradients (LibMTL) or the raw ones (the authors' code)
        apply_to: Literal["normalized", "raw"] = "normalized"

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        if len(tasks) > MAX_TASKS:
            raise UserError(f"combiner 'mgda' solves exactly for at most {MAX_TASKS} tasks, got {len(tasks)}")

    def task_weights(self, gramian, step: StepInfo):
        return mgda_weights(gramian, self.options.normalization, self.options.apply_to, step.losses)
