"""Auto-Lambda: Liu, James, Davison & Johns (2022), "Auto-Lambda: Disentangling Dynamic Task
Relationships", TMLR.

Task weights lambda are learned by meta-gradient: each step, the model takes a virtual SGD step on
the weighted loss, theta' = theta - alpha sum_t lambda_t grad L_t(theta), and lambda moves to lower
the loss of a held-out batch at theta' (all tasks are primary here: the multi-task mode). Since
theta' is linear in lambda, the meta-gradient is exactly

    d L_val(theta') / d lambda_t = -alpha grad L_val(theta') . grad L_t(theta),

which the authors approximate by a central finite difference (their "Hessian" term, O(eps^2)
apart); here it is taken from the per-task gradients the step computes anyway. Then lambda takes an
Adam step (`meta_lr`), and the model steps on sum_t lambda_t L_t (heads included). The held-out
batch is one extra batch per task from the training split, never dev (StepInputs.extra_losses).
Cost per step: T backwards for the per-task gradients, the virtual step (a copy of the trainable
parameters), and a forward and backward of the held-out batch.

Conventions (docs/combiners.md): the meta-gradient is divided by the trace of the per-task Gramian
before Adam, so Adam's epsilon does not freeze the weights of tiny gradients; alpha is the run's
current learning rate, the virtual step plain SGD (the authors add the optimizer's momentum and
weight decay when it is SGD; the run's optimizer is AdamW). Defaults are the authors': initial
weight 0.1, meta learning rate 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import (
    GradientCombiner,
    gramian64,
    task_gradients,
    write_head_gradients,
    write_shared_gradient,
)
from mtlbench.strategies.registry import register
from torch import Tensor


def meta_gradient(task_gradients_: Tensor, held_out_gradient: Tensor, alpha: float) -> Tensor:
    """-alpha (grad L_val(theta') . grad L_t(theta)) for each row t, in float64."""
    return -alpha * (task_gradients_.double() @ held_out_gradient.double())


@register("combiner", "auto_lambda")
class AutoLambda(GradientCombiner):
    """Auto-Lambda (Liu et al., 2022): task weights learned by the meta-gradient of a held-out loss."""

    extra_batches = 1
    weights_scale_heads = True

    @dataclass
    class Options:
        init: float = 0.1  # initial weight of every task
        meta_lr: float = 1e-4  # Adam learning rate of the weights
        virtual_lr: float = 0.0  # alpha of the virtual step; 0: the run's current learning rate

        def __post_init__(self):
            if not (self.init > 0 and self.meta_lr > 0 and math.isfinite(self.meta_lr)) or self.virtual_lr < 0:
                raise ValueError("need init > 0, meta_lr > 0 and virtual_lr >= 0")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.weights = torch.full((len(tasks),), float(options.init), dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.weights], lr=options.meta_lr)
        self.extra_forward_passes = 0

    def aggregate(self, gradients, gramian, step):  # pragma: no cover - backward does the work
        raise NotImplementedError

    def backward(self, losses, shared, task_specific, pipeline):
        tasks = tuple(losses)
        rows = self.task_rows(tasks)
        gradients, heads = task_gradients(losses, shared, task_specific, pipeline)
        gramian = gramian64(gradients)
        alpha = self.options.virtual_lr or self.step_inputs.learning_rate
        self._meta_step(tasks, rows, gradients, heads, gramian, shared, task_specific, pipeline, alpha)
        weights = self.weights.detach()[rows]
        if shared:
            write_shared_gradient(weights.to(gradients.device, gradients.dtype) @ gradients, shared)
        write_head_gradients(heads, task_specific, dict(zip(tasks, weights.tolist())))
        self._record(gramian, weights, list(tasks))

    def _meta_step(self, tasks, rows, gradients, heads, gramian, shared, task_specific, pipeline, alpha):
        """One Adam step of the weights along the exact meta-gradient (module docstring)."""
        own = {t: list(task_specific.get(t, ())) for t in tasks}
        trained = list(shared) + [p for t in tasks for p in own[t]]
        saved = [p.detach().clone() for p in trained]
        lambdas = self.weights.detach()[rows]
        with torch.no_grad():  # theta' = theta - alpha sum_t lambda_t g_t, heads included
            if shared:
                add_to_parameters(shared, -alpha * (lambdas.to(gradients.device, gradients.dtype) @ gradients))
            for lam, task in zip(lambdas.tolist(), tasks):
                for parameter, grad in zip(own[task], heads[task]):
                    if grad is not None:
                        parameter.sub_(alpha * lam * grad)
        held_out = self.step_inputs.extra_losses()[0]
        self.extra_forward_passes += len(tasks)
        found = torch.autograd.grad(sum(held_out[t] for t in tasks), trained, allow_unused=True)
        with torch.no_grad():
            for parameter, value in zip(trained, saved):
                parameter.copy_(value)
        found = [torch.zeros_like(p) if g is None else g for p, g in zip(trained, found)]
        held_matrix = torch.cat([g.reshape(-1) for g in found[:len(shared)]])[None] if shared \
            else gradients.new_zeros(1, 0)
        held_heads, offset = {}, len(shared)
        for task in tasks:
            held_heads[task] = found[offset:offset + len(own[task])]
            offset += len(own[task])
        held_matrix, held_heads = pipeline.per_task(held_matrix, held_heads)  # unscaled, averaged like the rest
        meta = meta_gradient(gradients, held_matrix[0], alpha).cpu() if shared else torch.zeros(len(tasks),
                                                                                               dtype=torch.float64)
        for i, task in enumerate(tasks):
            for grad, held in zip(heads[task], held_heads[task]):
                if grad is not None:
                    meta[i] -= alpha * float((grad.double() * held.double()).sum())
        trace = float(gramian.diagonal().sum()) + sum(float(g.double().square().sum()) for t in tasks
                                                       for g in heads[t] if g is not None)
        full = torch.zeros_like(self.weights)
        full[rows] = meta / trace if trace > 0 and math.isfinite(trace) else 0.0
        self.optimizer.zero_grad()
        self.weights.grad = full
        self.optimizer.step()

    def summary(self):
        summary = super().summary()
        if summary:
            summary["weights"] = dict(zip(self.tasks, self.weights.detach().tolist()))
            summary["extra_forward_passes"] = self.extra_forward_passes
        return summary


def add_to_parameters(shared, vector: Tensor) -> None:
    """Add the n-vector to the shared parameters in place (the virtual step)."""
    for parameter, piece in zip(shared, vector.split([p.numel() for p in shared])):
        parameter.add_(piece.view_as(parameter))
