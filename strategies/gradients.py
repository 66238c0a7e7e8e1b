"""Shared machinery for combiners that work on per-task gradients.

Per-task graphs are disjoint (each task's batch has its own forward), so T per-task backwards cost
about one summed backward. Only the *shared* (encoder) parameters are stacked into a T x n matrix;
each head receives its own task's gradient untouched. A method then needs only the T x T Gramian
to choose task weights, and the combined gradient is `weights @ G`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from strategies.base import Combiner

EPS = 1e-12


def task_gradients(losses: Mapping[str, Tensor], shared: Sequence[nn.Parameter],
                   task_specific: Mapping[str, Sequence[nn.Parameter]]) -> Tensor:
    """Stack each task's gradient of the shared parameters into a T x n matrix (rows in `losses`
    order); accumulate each task's head gradient into its `.grad`."""
    shared = list(shared)
    rows = []
    for task, loss in losses.items():
        heads = list(task_specific.get(task, ()))
        grads = torch.autograd.grad(loss, shared + heads, allow_unused=True)
        # A parameter the task does not reach (e.g. an unused pooler) contributes zeros.
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).view(-1)
                               for g, p in zip(grads[:len(shared)], shared)]))
        for parameter, grad in zip(heads, grads[len(shared):]):
            if grad is not None:
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad
    return torch.stack(rows)


def write_shared_gradient(vector: Tensor, shared: Sequence[nn.Parameter]) -> None:
    """Unflatten the combined n-vector into the shared parameters' `.grad`."""
    pieces = vector.split([p.numel() for p in shared])  # views: `vector` is fresh every step
    for parameter, piece in zip(shared, pieces):
        piece = piece.view_as(parameter)
        parameter.grad = piece if parameter.grad is None else parameter.grad + piece


def cosines(gramian: Tensor) -> Tensor:
    """Pairwise cosine similarities from the Gramian (0 where a gradient is zero)."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return gramian / (norms[:, None] * norms[None, :]).clamp_min(EPS)


class GradientCombiner(Combiner):
    """Base for gradient-surgery and gradient-weighting methods: subclasses choose task weights
    from the Gramian (`task_weights`); the update is `weights @ G`.

    Records, per task pair, the fraction of steps whose gradients conflict (negative cosine) and
    the mean cosine, and the mean task weights, for the run record.
    """

    needs_several_tasks = True

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.steps = 0
        self._negative = torch.zeros(len(tasks), len(tasks))
        self._cosine_sum = torch.zeros(len(tasks), len(tasks))
        self._weight_sum = torch.zeros(len(tasks))

    @abstractmethod
    def task_weights(self, gramian: Tensor) -> Tensor:
        """T task weights from the T x T Gramian of the task gradients."""

    def backward(self, losses, shared, task_specific):
        gradients = task_gradients(losses, shared, task_specific)
        gramian = gradients @ gradients.T  # once per step: the method and the statistics share it
        weights = self.task_weights(gramian).to(gradients.dtype)
        write_shared_gradient(weights @ gradients, shared)
        self._record(gramian, weights, list(losses))

    def _record(self, gramian: Tensor, weights: Tensor, tasks: list[str]) -> None:
        index = torch.tensor([self.tasks.index(t) for t in tasks])
        cos = cosines(gramian).cpu()
        grid = index[:, None], index[None, :]
        self._negative[grid] += (cos < 0).float()
        self._cosine_sum[grid] += cos
        self._weight_sum[index] += weights.detach().cpu().float()
        self.steps += 1

    def summary(self) -> dict:
        if not self.steps:
            return {}
        pairs = {}
        for i, a in enumerate(self.tasks):
            for j in range(i + 1, len(self.tasks)):
                pairs[f"{a}|{self.tasks[j]}"] = {
                    "negative_cosine_fraction": (self._negative[i, j] / self.steps).item(),
                    "mean_cosine": (self._cosine_sum[i, j] / self.steps).item(),
                }
        return {"steps": self.steps, "conflicts": pairs,
                "mean_weights": dict(zip(self.tasks, (self._weight_sum / self.steps).tolist()))}
