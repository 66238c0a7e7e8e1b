"""One training step of the contract (strategies.base), and what it needs: the run's strategies,
the regularised loss of a task batch, the optimizer. Knows the step contract, not strategies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.parallel import SINGLE, Ranks
from mtlbench.bench.precision import MIN_LOSS_SCALE, SkippedStep, StepPipeline, all_finite
from mtlbench.strategies.base import (
    Combiner,
    FreezingSchedule,
    Regularizer,
    Sampler,
    StepInputs,
    TaskStep,
    with_gradient,
)


@dataclass(frozen=True)
class StepPlace:
    """Where a step is in its run: the epoch (1-based) and the step, a 1-based count of the run's
    training steps with this one included. (0, 0): a step outside a run (a benchmark, a test)."""

    epoch: int = 0
    step: int = 0


OUTSIDE_A_RUN = StepPlace()


class Diverged(Exception):
    """A non-finite loss or gradient: the run stops; its record says where (`place()`)."""

    def __init__(self, what: str, task: str | None, at: StepPlace):
        super().__init__(what)
        self.what, self.task, self.at = what, task, at

    def __str__(self) -> str:
        place = f"task '{self.task}', " if self.task else ""
        return f"{self.what} at {place}epoch {self.at.epoch}, step {self.at.step}"

    def place(self) -> dict:
        """The record's `diverged` entry."""
        return {"what": self.what, "task": self.task, "epoch": self.at.epoch, "step": self.at.step}


@dataclass
class Strategies:
    """Built strategy objects for one run (see strategies.base for the contract)."""

    sampler: Sampler
    combiner: Combiner
    regularizers: list[Regularizer]
    freezing: FreezingSchedule


class CleanBackward:
    """The clean loss's gradients w.r.t. the input embeddings and the parameters, from one backward
    made on first request, so that an adversarial regulariser pays for its own passes only (a
    one-step perturbation: 2 forwards + 2 backwards in all).

    With the combiner's fixed weight w for this task (`Combiner.fixed_loss_weights`), that backward
    puts w * grad L straight into `.grad`, as the textbook implementation does. Otherwise the
    combiner gets a loss with the same value and the same parameter gradient, whose backward is one
    fused multiply (`with_gradient`)."""

    def __init__(self, loss: torch.Tensor, embeddings: torch.Tensor, parameters: list[torch.nn.Parameter],
                 retain_graph: bool, weight: float | None = None, multiplier: float = 1.0):
        self.loss, self.embeddings, self.parameters = loss, embeddings, parameters
        self.retain_graph = retain_graph
        # `multiplier` (the pipeline's: loss scale, rank share) goes into every backward and is
        # taken out of the input gradient again, so that a perturbation never sees it.
        self.multiplier = multiplier
        weight = weight * multiplier if weight else None
        self.weight = weight if weight else None  # a zero weight would lose the input gradient
        self.input_grad, self.parameter_grads = None, None

    def input_gradient(self) -> torch.Tensor:
        if self.input_grad is None and self.weight is not None:
            self.embeddings.retain_grad()  # reaches the task's trainable parameters (inputs=[...]: 5 % slower)
            self._weighted(self.loss).backward(retain_graph=self.retain_graph)
            gradient = self.embeddings.grad
            self.input_grad = gradient if self.weight == 1.0 else gradient / self.weight
        elif self.input_grad is None:
            grads = torch.autograd.grad(self._multiplied(self.loss), [self.embeddings, *self.parameters],
                                        retain_graph=self.retain_graph, allow_unused=True)
            self.input_grad, self.parameter_grads = grads[0], grads[1:]
            if self.multiplier not in (0.0, 1.0):
                self.input_grad = self.input_grad / self.multiplier
        return self.input_grad

    def _multiplied(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.multiplier == 1.0 else self.multiplier * loss

    def _weighted(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.weight == 1.0 else self.weight * loss

    @property
    def in_grad(self) -> bool:
        """Whether the clean gradient is in `.grad` already."""
        return self.weight is not None and self.input_grad is not None

    def loss_for_combiner(self, terms: list[torch.Tensor]) -> torch.Tensor:
        """The clean loss plus the regularisers' terms, as the combiner gets it. If the clean
        gradient is in `.grad` already, w * terms is back-propagated now, and the loss comes back
        as a leaf of its own, which adds nothing when the combiner calls backward."""
        if self.in_grad:
            loss = self.loss.detach()
            for term in terms:
                loss = loss + term
            if loss.requires_grad:
                self._weighted(loss).backward()
            return loss.detach().requires_grad_(True)
        if self.parameter_grads is None:
            loss = self._multiplied(self.loss)
        else:
            loss = with_gradient(self._multiplied(self.loss), self.parameters, self.parameter_grads)
        for term in terms:
            loss = loss + self._multiplied(term)
        return loss


def regularized_loss(model: MultiTaskModel, regularizers: list[Regularizer], task: str,
                      batch: dict, fixed_weight: float | None = None, multiplier: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The task loss plus its regularisers' terms, and the task loss alone (detached). The clean
    forward starts from the word embeddings so that their gradient is available to the terms.

    `fixed_weight`: the combiner's fixed weight w for this task, if it has one. If a regulariser
    then asks for the input gradient, the clean backward puts w * grad L into `.grad`, and the rest,
    w * terms, is back-propagated here too; the loss is returned as a leaf of its own. One task's
    graphs are alive at a time, as in the textbook adversarial-training loop (measured on the joint
    one-step attack: 2.04-2.22x -> 1.97-2.04x a summed step, peak tensor memory 20.2 -> 8.9 MiB).
    `multiplier`: the pipeline's factor for this task's loss (loss scale, rank share), in every
    backward made here and in the returned loss."""
    embeddings = model.input_embeddings(batch["input_ids"])
    if not embeddings.requires_grad:  # frozen embeddings (a freezing schedule): an attack still needs dL/de
        embeddings.requires_grad_(True)
    output = model(task, batch, inputs_embeds=embeddings)
    parameters = [p for p in model.shared_parameters() + model.task_parameters()[task] if p.requires_grad]
    clean_graph_used = any(r.uses_clean_graph for r in regularizers)
    clean = CleanBackward(output.loss, embeddings, parameters, clean_graph_used, fixed_weight, multiplier)
    if not clean_graph_used:  # the terms get their own lookup, so the clean graph can go after its backward
        embeddings = model.input_embeddings(batch["input_ids"])
    outputs = model.outputs_closure(task, batch)
    step = TaskStep(task=task, loss=output.loss, pooled=output.pooled, labels=batch["labels"],
                    input_embeddings=embeddings, padding_mask=batch["attention_mask"],
                    loss_from_embeddings=lambda e: outputs(e)[0], spec=model.specs[task],
                    logits=output.logits, outputs_from_embeddings=outputs, input_gradient=clean.input_gradient,
                    parameters=parameters)
    terms = [value for regularizer in regularizers for value in regularizer.terms(step).values()]
    return clean.loss_for_combiner(terms), output.loss.detach()


def training_step(model: MultiTaskModel, strategies: Strategies, batches: dict[str, dict], optimizer,
                  schedule=None, max_grad_norm: float | None = 1.0, pipeline: StepPipeline | None = None,
                  shares: dict[str, float] | None = None, at: StepPlace = OUTSIDE_A_RUN,
                  extra: list[dict[str, dict]] | None = None) -> dict[str, torch.Tensor]:
    """One step of the contract: each task's loss plus its regulariser terms, the combiner's
    backward, clipping (before the step), the optimizer step. Returns each task's own loss, detached
    (over the whole batch: data parallel, `batches` are this rank's shards, `shares` their fractions).

    `pipeline` (default: fp32, one process) sets the precision and the ranks: every loss is
    multiplied by its factor, and the gradients are unscaled and averaged before the combiner
    reads them (per task) or after its plain backward. fp16: a step whose gradients overflow is
    skipped (no update, no schedule step) and counted in the pipeline. A non-finite loss or gradient
    raises `Diverged` at `at`, the step's place in its run. `extra`: the combiner's
    `extra_batches` more batches per task (StepInputs.extra_losses)."""
    pipeline = pipeline or StepPipeline()
    pipeline.begin(shares or {})
    combiner = strategies.combiner
    _check_inputs(strategies, extra)
    losses, task_losses, representations = _step_losses(model, strategies, batches, pipeline)
    task_losses = pipeline.global_values(task_losses)
    try:
        _check_finite(losses, "loss", at, pipeline.ranks)  # with the regularisers' terms
        groups = getattr(optimizer, "param_groups", None)  # a stand-in optimizer may have none
        combiner.prepare(StepInputs(_extra_losses(model, extra, pipeline) if extra else None,
                                    groups[0]["lr"] if groups else 0.0, representations))
        combiner.backward(losses, model.shared_parameters(), model.task_parameters(), pipeline)
        if pipeline.changes_gradients:
            pipeline.reduce_grads([p for group in optimizer.param_groups for p in group["params"]])
        # The norm is needed anyway for clipping; an infinite limit measures without clipping.
        pipeline.grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
        finite = bool(torch.isfinite(pipeline.grad_norm))
    except SkippedStep:
        finite = False
    except Diverged:
        # fp16: with the clean losses finite, a non-finite term is an overflow of the scaled backward
        # that gave an attack its input gradient: the step is skipped like any overflow.
        if pipeline.scaler is None or not all_finite(list(task_losses.values())):
            raise
        finite = False
    if pipeline.overflowed(finite):
        optimizer.zero_grad(set_to_none=True)
        if pipeline.loss_scale() < MIN_LOSS_SCALE:
            raise Diverged(f"non-finite gradient at every fp16 loss scale down to {pipeline.loss_scale()}", None, at)
        return task_losses
    if not finite:
        raise Diverged("non-finite gradient (after the combiner)", None, at)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    optimizer.zero_grad(set_to_none=True)

    def losses_after() -> dict[str, torch.Tensor]:
        with pipeline.autocast():
            return pipeline.global_values(_losses_now(model, batches), keep=False)

    combiner.after_step(task_losses, losses_after)
    return task_losses


def _check_inputs(strategies: Strategies, extra: list | None) -> None:
    """What a step outside the trainer can get wrong (the suite's loading refuses it before)."""
    combiner = strategies.combiner
    if len(extra or ()) != combiner.extra_batches:
        raise ValueError(f"combiner '{combiner.name}' takes {combiner.extra_batches} extra batches per task per step, "
                         f"given {len(extra or ())}")
    if combiner.needs_representations and strategies.regularizers:
        raise ValueError(f"combiner '{combiner.name}' with on = 'representation' does not compose with regularisers")


def _extra_losses(model: MultiTaskModel, extra: list[dict[str, dict]], pipeline: StepPipeline):
    def losses() -> list[dict[str, torch.Tensor]]:
        with pipeline.autocast():
            return [{task: pipeline.multiplier(task) * model(task, batch).loss for task, batch in draw.items()}
                    for draw in extra]
    return losses


def _step_losses(model: MultiTaskModel, strategies: Strategies, batches: dict[str, dict], pipeline: StepPipeline
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Each task's loss for the combiner (times the pipeline's multiplier, with the regularisers'
    terms), its own loss value (detached, this rank's) and, if the combiner asks, its representation."""
    losses, task_losses = {}, {}
    representations = {} if strategies.combiner.needs_representations else None
    weights = strategies.combiner.fixed_loss_weights() if strategies.regularizers else None
    with pipeline.autocast():
        for task, batch in batches.items():
            multiplier = pipeline.multiplier(task)
            if strategies.regularizers:
                losses[task], task_losses[task] = regularized_loss(model, strategies.regularizers, task, batch,
                                                                   weights[task] if weights else None, multiplier)
            else:
                output = model(task, batch)
                loss = output.loss
                task_losses[task] = loss.detach()
                losses[task] = loss if multiplier == 1.0 else multiplier * loss
                if representations is not None:
                    representations[task] = output.representation
    return losses, task_losses, representations


def _check_finite(losses: dict[str, torch.Tensor], what: str, at: StepPlace, ranks: Ranks = SINGLE) -> None:
    """One device read for all tasks. Data parallel: summed over the ranks first (a non-finite value
    anywhere makes the sum non-finite), so that every rank stops together."""
    values = ranks.sum_(torch.stack([loss.detach().float() for loss in losses.values()]))
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        task = list(losses)[int((~finite).nonzero()[0])]
        raise Diverged(f"non-finite {what} ({values[list(losses).index(task)].item()})", task, at)


@torch.no_grad()
def _losses_now(model: MultiTaskModel, batches: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Each task's loss on its batch at the current parameters, without a graph."""
    return {task: model(task, batch).loss for task, batch in batches.items()}


def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one kernel for all parameters; measured on CPU: 0.27 ms a step
    against 1.2 ms for foreach, 1880 steps a quick-suite run), or foreach where fused is missing."""
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True)


