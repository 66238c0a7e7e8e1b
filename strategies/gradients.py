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
    if not shared:  # e.g. a frozen backbone: the heads still get their gradients below
        for task, loss in losses.items():
            heads = list(task_specific.get(task, ()))
            for parameter, grad in zip(heads, torch.autograd.grad(loss, heads, allow_unused=True)):
                if grad is not None:
                    parameter.grad = grad if parameter.grad is None else parameter.grad + grad
        return torch.zeros(len(losses), 0)
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


class WindowMeans:
    """Means of named per-step values over consecutive windows of `every` steps: a trajectory
    that stays small in the record however long the run."""

    def __init__(self, names: Sequence[str], every: int):
        self.names, self.every = list(names), every
        self.steps: list[int] = []
        self.series: dict[str, list[float]] = {name: [] for name in self.names}
        self._sums, self._count, self._seen = dict.fromkeys(self.names, 0.0), 0, 0
        self._totals = dict.fromkeys(self.names, 0.0)

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._sums[name] += value
            self._totals[name] += value
        self._count += 1
        self._seen += 1
        if self._count == self.every:
            self._flush()

    def _flush(self) -> None:
        self.steps.append(self._seen)
        for name in self.names:
            self.series[name].append(self._sums[name] / self._count)
        self._sums, self._count = dict.fromkeys(self.names, 0.0), 0

    def means(self) -> dict[str, float]:
        """Means over every step so far."""
        return {name: total / max(self._seen, 1) for name, total in self._totals.items()}

    def as_dict(self) -> dict:
        steps, series = list(self.steps), {name: list(values) for name, values in self.series.items()}
        if self._count:  # the last, partial window
            steps.append(self._seen)
            for name in self.names:
                series[name].append(self._sums[name] / self._count)
        return {"every": self.every, "step": steps, **series}


TRAJECTORY_EVERY = 25  # steps per point of the recorded trajectories


def pair_names(tasks: Sequence[str]) -> list[str]:
    return [f"{a}|{b}" for i, a in enumerate(tasks) for b in tasks[i + 1:]]


class GradientCombiner(Combiner):
    """Base for gradient-surgery and gradient-weighting methods: subclasses choose task weights
    from the Gramian (`task_weights`); the update is `weights @ G`.

    Records, per task pair, the fraction of steps whose gradients conflict (negative cosine) and
    the mean cosine; and the trajectories of the task weights and pair cosines (window means).
    """

    needs_several_tasks = True

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.steps = 0
        self.step_tasks = list(tasks)
        self.pairs = pair_names(self.tasks)
        self._negative = dict.fromkeys(self.pairs, 0)
        self._cosine_sum = dict.fromkeys(self.pairs, 0.0)
        self.weight_trajectory = WindowMeans(self.tasks, TRAJECTORY_EVERY)
        self.cosine_trajectory = WindowMeans(self.pairs, TRAJECTORY_EVERY)

    @abstractmethod
    def task_weights(self, gramian: Tensor) -> Tensor:
        """T task weights from the T x T Gramian of the task gradients (rows in step order)."""

    def backward(self, losses, shared, task_specific):
        self.step_tasks = list(losses)  # the Gramian's rows, for methods with per-task state
        gradients = task_gradients(losses, shared, task_specific)
        gramian = gradients @ gradients.T  # once per step: the method and the statistics share it
        weights = self.task_weights(gramian).to(gradients.dtype)
        write_shared_gradient(weights @ gradients, shared)
        self._record(gramian, weights, list(losses))

    def _record(self, gramian: Tensor, weights: Tensor, tasks: list[str]) -> None:
        cos = cosines(gramian.double()).tolist()  # one device sync; T is tiny
        step_cosines = {}
        for i, a in enumerate(tasks):
            for j in range(i + 1, len(tasks)):
                pair = f"{a}|{tasks[j]}" if f"{a}|{tasks[j]}" in self._negative else f"{tasks[j]}|{a}"
                self._negative[pair] += cos[i][j] < 0
                self._cosine_sum[pair] += cos[i][j]
                step_cosines[pair] = cos[i][j]
        self.weight_trajectory.add(dict(zip(tasks, weights.tolist())))
        self.cosine_trajectory.add(step_cosines)
        self.steps += 1

    def summary(self) -> dict:
        if not self.steps:
            return {}
        return {
            "steps": self.steps,
            "conflicts": {pair: {"negative_cosine_fraction": self._negative[pair] / self.steps,
                                 "mean_cosine": self._cosine_sum[pair] / self.steps} for pair in self.pairs},
            "mean_weights": self.weight_trajectory.means(),
            "weight_trajectory": self.weight_trajectory.as_dict(),
            "cosine_trajectory": self.cosine_trajectory.as_dict(),
        }


class LossWeightingCombiner(Combiner):
    """Base for methods that only re-weight the task losses: one backward of sum_t w_t L_t, which
    equals `weights @ G` without forming G. Records the task-weight trajectory."""

    needs_several_tasks = True

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.steps = 0
        self.weight_trajectory = WindowMeans(self.tasks, TRAJECTORY_EVERY)

    @abstractmethod
    def loss_weights(self, losses: Mapping[str, Tensor]) -> Tensor:
        """T weights for this step's task losses (in `losses` order)."""

    def backward(self, losses, shared, task_specific):
        weights = self.loss_weights(losses)
        (weights.to(next(iter(losses.values())).device) @ torch.stack(list(losses.values()))).backward()
        self.weight_trajectory.add(dict(zip(losses, weights.tolist())))
        self.steps += 1

    def summary(self) -> dict:
        if not self.steps:
            return {}
        return {"steps": self.steps, "mean_weights": self.weight_trajectory.means(),
                "weight_trajectory": self.weight_trajectory.as_dict()}
