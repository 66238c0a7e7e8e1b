"""MoCo: Fernando, Shen, Liu, Chaudhury, Murugesan & Chen (2023), "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR (Algorithm 1).

Stochastic MGDA is biased: the min-norm weights of noisy gradients are not those of the true
ones. MoCo tracks each task's gradient with a moving estimate and takes one projected-gradient
step on the min-norm weights per training step:

    y_t <- y_t - beta_k (y_t - g_t),                      beta_k = beta / k^beta_sigma
    lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda),   gamma_k = gamma / k^gamma_sigma
    update = lambda @ Y.

The state holds Y, a T x n copy of the gradients. Conventions (docs/combiners.md): the lambda step
is taken on Y Y^T / trace (with the gradients at unit scale the paper's gamma then means the same
at every scale; LibMTL instead rescales each gradient to norm L_t, and replaces the projection by a
softmax); Y starts at the first step's gradients (LibMTL starts at zero, which shrinks the first
updates by (1 - beta)^k). Defaults are LibMTL's: beta 0.5, beta_sigma 0.5, gamma 0.1,
gamma_sigma 0.5, rho 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import GradientCombiner, StepInfo, gramian64, normalized, project_onto_simplex
from mtlbench.strategies.registry import register
from torch import Tensor


def moco_lambda_step(lambdas: Tensor, gram: Tensor, gamma: float, rho: float) -> Tensor:
    """One projected-gradient step of the min-norm problem: Proj(lambda - gamma (K + rho I) lambda)."""
    return project_onto_simplex(lambdas - gamma * (gram @ lambdas + rho * lambdas))


@register("combiner", "moco")
class MoCo(GradientCombiner):
    """MoCo (Fernando et al., 2023): tracked gradients and one min-norm step per training step."""

    @dataclass
    class Options:
        beta: float = 0.5  # tracking rate of the gradient estimates
        beta_sigma: float = 0.5  # beta decays as beta / k^beta_sigma
        gamma: float = 0.1  # step size of the weights
        gamma_sigma: float = 0.5  # gamma decays as gamma / k^gamma_sigma
        rho: float = 0.0  # l2 regularisation of the weights

        def __post_init__(self):
            if not 0 < self.beta <= 1:
                raise ValueError(f"beta must be in (0, 1], got {self.beta}")
            if not (self.gamma > 0 and math.isfinite(self.gamma)):
                raise ValueError(f"gamma must be a positive number, got {self.gamma}")
            if self.beta_sigma < 0 or self.gamma_sigma < 0 or self.rho < 0:
                raise ValueError("beta_sigma, gamma_sigma and rho must be >= 0")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.estimates: Tensor | None = None  # T x n, rows in the run's task order
        self.lambdas = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
        self.step_count = 0

    def aggregate(self, gradients, gramian, step: StepInfo):
        rows = self.task_rows(step.tasks)
        self.step_count += 1
        if self.estimates is None:
            self.estimates = gradients.new_zeros(len(self.tasks), gradients.shape[1])
            self.estimates[rows] = gradients
        else:
            beta = self.options.beta / self.step_count ** self.options.beta_sigma
            self.estimates[rows] += beta * (gradients - self.estimates[rows])
        tracked = self.estimates[rows]
        gram, _ = normalized(gramian64(tracked))
        gamma = self.options.gamma / self.step_count ** self.options.gamma_sigma
        mass = self.lambdas[rows].sum()  # a step holding some of the tasks keeps the others' weight
        weights = moco_lambda_step(self.lambdas[rows] / mass, gram, gamma, self.options.rho)
        self.lambdas[rows] = weights * mass
        return weights.to(tracked.device, tracked.dtype) @ tracked, weights
