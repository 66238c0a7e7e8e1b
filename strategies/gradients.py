"""Shared machinery for combiners that work on per-task gradients or per-task loss weights.

Per-task graphs are disjoint (each task's batch has its own forward), so T per-task backwards cost
about one summed backward. Only the *shared* (encoder) parameters are stacked into a T x n matrix;
each head receives its own task's gradient. Most methods then need only the T x T Gramian to choose
task weights (weighting), and the base applies `weights @ G` (aggregation) and records the
statistics, once, for every method.

Correct at every scale: real gradients are not unit-sized. The Gramian is accumulated in float64
whatever the gradients' dtype (float32 accumulation of an exactly rank-1 Gramian leaves 0.6 eps of
the largest eigenvalue in the smallest at n = 1e3, 5.8 eps at 1e5 and 393 eps at 1e7: noise a rank
cut-off cannot tell from a direction). Weightings solve on `G / trace(G)` and take rank decisions
from the precision of the gradients' dtype (`StepInfo.eps`), never from absolute tolerances.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from mtlbench.strategies.base import Combiner, GradientPipeline
from torch import Tensor, nn

GRAMIAN_CHUNK = 1 << 20  # columns per float64 block: bounds the float64 copy, not the result


def task_gradients(losses: Mapping[str, Tensor], shared: Sequence[nn.Parameter],
                   task_specific: Mapping[str, Sequence[nn.Parameter]], pipeline: GradientPipeline
                   ) -> tuple[Tensor, dict[str, list[Tensor | None]]]:
    """Each task's gradient of the shared parameters as a T x n matrix (rows in `losses` order;
    zeros where a task does not reach a parameter, e.g. an unused pooler), and each task's
    gradients of its own head parameters; through `pipeline` (unscaled, averaged over ranks)."""
    return pipeline.per_task(*_raw_task_gradients(losses, list(shared), task_specific))


def _raw_task_gradients(losses, shared, task_specific):
    heads = {}
    if not shared:  # e.g. a frozen backbone: only the heads train
        for task, loss in losses.items():
            own = list(task_specific.get(task, ()))
            heads[task] = list(torch.autograd.grad(loss, own, allow_unused=True)) if own else []
        return torch.zeros(len(losses), 0), heads
    matrix = None
    for row, (task, loss) in enumerate(losses.items()):
        own = list(task_specific.get(task, ()))
        grads = torch.autograd.grad(loss, shared + own, allow_unused=True)
        if matrix is None:  # allocated once the first task's activations are freed: no higher peak
            matrix = shared[0].new_empty(len(losses), sum(p.numel() for p in shared))
        torch.cat([(g if g is not None else torch.zeros_like(p)).view(-1) for g, p in zip(grads[:len(shared)], shared)],
                  out=matrix[row])  # straight into the matrix: no second copy
        heads[task] = list(grads[len(shared):])
    return matrix, heads


def write_shared_gradient(vector: Tensor, shared: Sequence[nn.Parameter]) -> None:
    """Unflatten the combined n-vector into the shared parameters' `.grad`."""
    pieces = vector.split([p.numel() for p in shared])  # views: `vector` is fresh every step
    for parameter, piece in zip(shared, pieces):
        piece = piece.view_as(parameter)
        parameter.grad = piece if parameter.grad is None else parameter.grad + piece


def write_head_gradients(heads: Mapping[str, list[Tensor | None]], task_specific: Mapping[str, Sequence[nn.Parameter]],
                         scales: Mapping[str, float] | None = None) -> None:
    """Add each task's head gradients to `.grad`, times the task's scale if given."""
    for task, grads in heads.items():
        scale = None if scales is None else scales[task]
        for parameter, grad in zip(task_specific.get(task, ()), grads):
            if grad is None:
                continue
            if scale is not None:
                grad = grad * scale
            parameter.grad = grad if parameter.grad is None else parameter.grad + grad


def gramian64(gradients: Tensor) -> Tensor:
    """G G^T accumulated in float64, in column blocks (no full float64 copy of G)."""
    if gradients.dtype == torch.float64:
        return gradients @ gradients.T
    tasks, dims = gradients.shape
    gramian = torch.zeros(tasks, tasks, dtype=torch.float64, device=gradients.device)
    for start in range(0, dims, GRAMIAN_CHUNK):
        block = gradients[:, start:start + GRAMIAN_CHUNK].double()
        gramian += block @ block.T
    return gramian


def normalized(gramian: Tensor) -> tuple[Tensor, float]:
    """G / trace(G) as float64 on the CPU, and trace(G); the zero matrix and 0 when every gradient
    is zero. A method's weights must not depend on the Gramian's overall scale: solving on this
    makes it so, and puts every tolerance on a unit scale."""
    gram = gramian.detach().to("cpu", torch.float64)
    gram = (gram + gram.T) / 2  # exactly symmetric
    trace = float(gram.diagonal().clamp_min(0).sum())
    if not trace > 0 or not torch.isfinite(gram).all():
        return torch.zeros_like(gram), 0.0
    return gram / trace, trace


def nonzero_rows(gram: Tensor, eps: float) -> Tensor:
    """Which gradients are not zero, from a trace-normalised Gramian: squared norm above what
    rounding the gradients (relative precision `eps`) leaves of an exact zero among the others."""
    return gram.diagonal() > (eps * eps) * gram.shape[0]


def unit_gramian(gramian: Tensor, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """`normalized(gramian)` and `nonzero_rows` of it, at the precision `eps` of the gradients'
    dtype (default: the Gramian's own): what most weightings start from."""
    gram, _ = normalized(gramian)
    return gram, nonzero_rows(gram, torch.finfo(gramian.dtype).eps if eps is None else eps)


def cosines(gramian: Tensor) -> Tensor:
    """Pairwise cosine similarities from the Gramian (0 where a gradient is zero)."""
    gram = gramian.double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    outer = norms[:, None] * norms[None, :]
    return torch.where(outer > 0, gram / torch.where(outer > 0, outer, 1.0), 0.0).clamp(-1.0, 1.0)


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


@dataclass(frozen=True)
class StepInfo:
    """What a weighting knows of the step besides the Gramian."""

    tasks: tuple[str, ...]  # the Gramian's rows, in order (a step may hold the tasks in any order)
    losses: Tensor  # the tasks' loss values, float64 on the CPU, same order
    eps: float  # machine epsilon of the gradients' dtype: the precision rank decisions can trust


class GradientCombiner(Combiner):
    """Base for methods that need the per-task gradients of the shared parameters.

    Subclasses implement `aggregate` (GradDrop, DB-MTL) or, far more often, subclass
    `GramianWeighting` and choose task weights from the Gramian alone. Records, per task pair, the
    fraction of steps whose gradients conflict (negative cosine) and the mean cosine; and the
    trajectories of the task weights and pair cosines (window means).
    """

    needs_several_tasks = True
    # The weights multiply each head's gradient too: the method re-weights whole task losses
    # (GradNorm). Otherwise each head gets its own task's gradient untouched.
    weights_scale_heads: ClassVar[bool] = False

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.steps = 0
        self.pairs = pair_names(self.tasks)
        self._negative = dict.fromkeys(self.pairs, 0)
        self._cosine_sum = dict.fromkeys(self.pairs, 0.0)
        self.weight_trajectory = WindowMeans(self.tasks, TRAJECTORY_EVERY)
        self.cosine_trajectory = WindowMeans(self.pairs, TRAJECTORY_EVERY)

    def objectives(self, losses: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The per-task scalars whose gradients the method combines (DB-MTL: log losses). `values`:
        the tasks' loss values, unscaled, over the whole batch (the pipeline's `loss_values`)."""
        return losses

    @abstractmethod
    def aggregate(self, gradients: Tensor, gramian: Tensor, step: StepInfo) -> tuple[Tensor, Tensor | None]:
        """The update (n-vector) from the T x n task gradients and their float64 Gramian, and the
        task weights w if the update is `w @ gradients` (None otherwise)."""

    def backward(self, losses, shared, task_specific, pipeline):
        tasks = tuple(losses)
        values = pipeline.loss_values(losses)
        gradients, heads = task_gradients(self.objectives(losses, values), shared, task_specific, pipeline)
        gramian = gramian64(gradients)  # once per step: the method and the statistics share it
        eps = max(torch.finfo(gradients.dtype).eps, pipeline.compute_eps)
        step = StepInfo(tasks, torch.stack(list(values.values())).to("cpu", torch.float64), eps)
        update, weights = self.aggregate(gradients, gramian, step)
        if shared:
            write_shared_gradient(update, shared)
        scales = dict(zip(tasks, weights.tolist())) if self.weights_scale_heads and weights is not None else None
        write_head_gradients(heads, task_specific, scales)
        self._record(gramian, weights, list(tasks))

    def _record(self, gramian: Tensor, weights: Tensor | None, tasks: list[str]) -> None:
        cos = cosines(gramian).tolist()  # one device sync; T is tiny
        step_cosines = {}
        for i, a in enumerate(tasks):
            for j in range(i + 1, len(tasks)):
                pair = f"{a}|{tasks[j]}" if f"{a}|{tasks[j]}" in self._negative else f"{tasks[j]}|{a}"
                self._negative[pair] += cos[i][j] < 0
                self._cosine_sum[pair] += cos[i][j]
                step_cosines[pair] = cos[i][j]
        if weights is not None:
            self.weight_trajectory.add(dict(zip(tasks, weights.tolist())))
        self.cosine_trajectory.add(step_cosines)
        self.steps += 1
        self.latest = {**({f"weight/{t}": w for t, w in zip(tasks, weights.tolist())} if weights is not None else {}),
                       **{f"cosine/{pair}": c for pair, c in step_cosines.items()}}

    def summary(self) -> dict:
        if not self.steps:
            return {}
        summary = {
            "steps": self.steps,
            "conflicts": {pair: {"negative_cosine_fraction": self._negative[pair] / self.steps,
                                 "mean_cosine": self._cosine_sum[pair] / self.steps} for pair in self.pairs},
            "cosine_trajectory": self.cosine_trajectory.as_dict(),
        }
        trajectory = self.weight_trajectory.as_dict()
        if trajectory["step"]:  # aggregators that are not weightings record none
            summary["mean_weights"] = self.weight_trajectory.means()
            summary["weight_trajectory"] = trajectory
        return summary


@dataclass
class GramianOptions:
    """The option every Gramian weighting has: which gradients the Gramian is made of.
    "parameters": each task's gradient of the shared parameters (T backwards through the encoder).
    "representation": each task's gradient of its representation, the tensor its head reads
    (Sener & Koltun's MGDA-UB; LibMTL's rep_grad): the weights come from those, and the encoder
    gets one backward of sum_t w_t L_t through the representations."""

    on: Literal["parameters", "representation"] = "parameters"


class GramianWeighting(GradientCombiner):
    """A method that is a weighting: task weights from the Gramian (and the method's own explicit
    state), applied by the base as `weights @ G`; on the shared parameters' gradients or, with
    `on = "representation"`, on the representations' (`backward_on_representation`)."""

    @property
    def needs_representations(self) -> bool:
        return getattr(self.options, "on", "parameters") == "representation"

    def backward(self, losses, shared, task_specific, pipeline):
        if self.needs_representations:
            return self.backward_on_representation(losses, shared, task_specific, pipeline)
        return super().backward(losses, shared, task_specific, pipeline)

    def backward_on_representation(self, losses, shared, task_specific, pipeline):
        """Weights from the Gramian of the tasks' representation gradients (each task's flattened,
        zero-padded to the longest: with a batch per task, row entries pair the i-th element of
        each task's representation, as LibMTL's rep_grad does with an input per task); then one
        backward through the encoder of sum_t w_t dL_t/dz_t, and each head its own gradient.
        Gradients stay multiplied by the pipeline's factor (the same for every task on one process,
        so the weights do not see it); the trainer unscales `.grad` after."""
        tasks = tuple(losses)
        representations = self.step_inputs.representations
        rows, heads = [], {}
        for task, loss in losses.items():
            own = list(task_specific.get(task, ()))
            grads = torch.autograd.grad(loss, [representations[task], *own], retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(representations[task]) if grads[0] is None else grads[0])
            heads[task] = list(grads[1:])
        width = max(row.numel() for row in rows)
        matrix = torch.stack([torch.nn.functional.pad(row.reshape(-1), (0, width - row.numel())) for row in rows])
        gramian = gramian64(matrix)
        values = pipeline.loss_values(losses)
        eps = max(torch.finfo(matrix.dtype).eps, pipeline.compute_eps)
        weights = self.task_weights(gramian, StepInfo(tasks, torch.stack(list(values.values())).to("cpu", torch.float64),
                                                      eps))
        if shared:
            torch.autograd.backward([representations[t] for t in tasks],
                                    [w * row for w, row in zip(weights.tolist(), rows)], inputs=list(shared))
        scales = dict(zip(tasks, weights.tolist())) if self.weights_scale_heads else None
        write_head_gradients(heads, task_specific, scales)
        self._record(gramian, weights, list(tasks))

    @abstractmethod
    def task_weights(self, gramian: Tensor, step: StepInfo) -> Tensor:
        """T task weights (float64) from the T x T float64 Gramian of the task gradients."""

    def aggregate(self, gradients, gramian, step):
        weights = self.task_weights(gramian, step)
        return weights.to(gradients.device, gradients.dtype) @ gradients, weights


def task_permutations(generator: torch.Generator | None, tasks: Sequence[str], step_tasks: Sequence[str]) -> list[list[int]]:
    """For each of the step's tasks, a random visiting order of the step's rows. The draws belong to
    the run's task list, not to the step's row order, so the same step with its tasks listed in
    another order gets the same orders (permutation equivariance with the randomness fixed)."""
    row = {task: i for i, task in enumerate(step_tasks)}
    draws = {task: torch.randperm(len(tasks), generator=generator).tolist() for task in tasks}
    return [[row[tasks[k]] for k in draws[task] if tasks[k] in row] for task in step_tasks]


class LossWeightingCombiner(Combiner):
    """Base for methods that only re-weight the task losses: one backward of sum_t w_t L_t (plus
    the method's own penalty on its learned parameters), which equals `weights @ G` without forming
    G. Records the task-weight trajectory."""

    needs_several_tasks = True

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.steps = 0
        self.weight_trajectory = WindowMeans(self.tasks, TRAJECTORY_EVERY)

    @abstractmethod
    def loss_weights(self, losses: Mapping[str, Tensor]) -> Tensor:
        """T weights for this step's task losses (in `losses` order), from their values (detached,
        unscaled, over the whole batch). They may carry the gradient of the method's learned
        parameters (uncertainty weighting)."""

    def penalty(self, losses: Mapping[str, Tensor]) -> Tensor | None:
        """A term of the objective besides the weighted losses (uncertainty weighting's log sigma)."""
        return None

    def backward(self, losses, shared, task_specific, pipeline):
        stacked = torch.stack(list(losses.values()))
        values = pipeline.loss_values(losses)
        weights = self.loss_weights(values).to(stacked.device, stacked.dtype)
        objective = weights @ stacked
        penalty = self.penalty(values)
        if penalty is not None:  # scaled like the losses: the pipeline divides every gradient back
            objective = objective + pipeline.loss_scale() * penalty
        objective.backward()
        self.weight_trajectory.add(dict(zip(losses, weights.detach().tolist())))
        self.latest = {f"weight/{task}": w for task, w in zip(losses, weights.detach().tolist())}
        self.steps += 1

    def summary(self) -> dict:
        if not self.steps:
            return {}
        return {"steps": self.steps, "mean_weights": self.weight_trajectory.means(),
                "weight_trajectory": self.weight_trajectory.as_dict()}


def project_onto_simplex(y: Tensor) -> Tensor:
    """The Euclidean projection of `y` onto the probability simplex {x >= 0, sum x = 1} (the
    sort-based algorithm of Held, Wolfe & Crowder, 1974; Duchi et al., 2008)."""
    ordered = torch.sort(y, descending=True).values
    cumulative = ordered.cumsum(0) - 1.0
    index = torch.arange(1, len(y) + 1, dtype=y.dtype, device=y.device)
    support = int((ordered - cumulative / index > 0).sum())
    return (y - cumulative[support - 1] / support).clamp_min(0.0)


def cross_gramian64(first: Tensor, second: Tensor) -> Tensor:
    """A B^T of two T x n matrices accumulated in float64, in column blocks (as `gramian64`)."""
    if first.dtype == torch.float64 and second.dtype == torch.float64:
        return first @ second.T
    product = torch.zeros(first.shape[0], second.shape[0], dtype=torch.float64, device=first.device)
    for start in range(0, first.shape[1], GRAMIAN_CHUNK):
        product += first[:, start:start + GRAMIAN_CHUNK].double() @ second[:, start:start + GRAMIAN_CHUNK].double().T
    return product


class DoubleSampledWeighting(GradientCombiner):
    """Base for methods whose weights come from two independent batches per task (SDMGrad, MoDo):
    A = J_1 J_2^T, an unbiased estimate of the true Gramian where J_1 J_1^T is not. The step's own
    batch gives J_1, one extra batch per task (`extra_batches`, StepInputs.extra_losses) J_2; the
    update is weights @ (J_1 + J_2) / 2, each head the mean of its two gradients (MoDo's
    Equation 2.9b: both batches' losses). Cost: one more forward and backward per task per step,
    and a second T x n matrix. The statistics are J_1's."""

    extra_batches = 1

    @abstractmethod
    def cross_weights(self, cross: Tensor, first_squares: Tensor, second_squares: Tensor, step: StepInfo) -> Tensor:
        """T task weights (float64) from A = J_1 J_2^T (float64 on the CPU, T x T, not symmetric) and
        the squared row norms of J_1 and J_2 (for a scale-free normalisation)."""

    def aggregate(self, gradients, gramian, step):  # pragma: no cover - backward does the work
        raise NotImplementedError

    def backward(self, losses, shared, task_specific, pipeline):
        tasks = tuple(losses)
        values = pipeline.loss_values(losses)
        first, heads = task_gradients(losses, shared, task_specific, pipeline)
        extra = self.step_inputs.extra_losses()[0]
        second, second_heads = task_gradients({task: extra[task] for task in tasks}, shared, task_specific, pipeline)
        gramian = gramian64(first)
        eps = max(torch.finfo(first.dtype).eps, pipeline.compute_eps)
        step = StepInfo(tasks, torch.stack(list(values.values())).to("cpu", torch.float64), eps)
        second_squares = torch.stack([row.double().square().sum() for row in second]).cpu() if len(second[0]) \
            else torch.zeros(len(tasks), dtype=torch.float64)
        weights = self.cross_weights(cross_gramian64(first, second).cpu(), gramian.diagonal().cpu(), second_squares, step)
        if shared:
            first += second
            first *= 0.5
            write_shared_gradient(weights.to(first.device, first.dtype) @ first, shared)
        write_head_gradients({task: [None if a is None else (a + b) / 2 if b is not None else a / 2
                                     for a, b in zip(heads[task], second_heads[task])] for task in tasks},
                             task_specific)
        self._record(gramian, weights, list(tasks))
