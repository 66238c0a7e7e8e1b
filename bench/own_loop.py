"""Strategies in your own training loop: the harness's combiners, regularisers and freezing
schedules around a forward you write, without suites, records or the trainer.

    step = mtlbench.StrategyStep(tasks=["a", "b"], shared=encoder.parameters(),
                                 heads={"a": head_a.parameters(), "b": head_b.parameters()},
                                 combiner=COMBINER, regularizers=[REGULARISER, ...])
    for batch_a, batch_b in loader:
        step.backward({"a": loss_a, "b": loss_b})   # or TaskInputs, which regularisers need
        optimizer.step(); optimizer.zero_grad()

`backward` leaves the step's gradients in `.grad`, exactly as the harness's training step does
before clipping and the optimizer step (tests/bench/test_own_loop.py compares them). A regulariser
needs more than a loss: hand it a `TaskInputs` (the input embeddings, in the graph, and the forward
from embeddings to (loss, logits)). Methods that look at the loss after the optimizer step (FAMO)
get it through `after_step`. Precision: "fp32" or "bf16" (autocast is your forward's, the pipeline
only checks and unscales); data parallelism stays the harness's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from mtlbench.bench.precision import StepPipeline
from mtlbench.bench.step import CleanBackward
from mtlbench.strategies import registry
from mtlbench.strategies.base import StepInputs, TaskStep
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.spec import TaskSpec
from torch import Tensor, nn


@dataclass
class TaskInputs:
    """One task's step for regularisers: `embeddings` the input word embeddings the forward starts
    from (in the graph), `forward(embeddings) -> (loss, logits)`, and what the regulariser reads."""

    embeddings: Tensor
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    padding_mask: Tensor
    labels: Tensor | None = None
    pooled: Tensor | None = None  # contrastive: the pair task's pooled vectors
    spec: TaskSpec | None = None  # SMART, R3F, R-Drop: the task's kind and labels


def _spec(entry) -> tuple[str, dict]:
    """"name" or {"name": ..., option: value}: a strategy as a recipe writes it."""
    if isinstance(entry, str):
        return entry, {}
    entry = dict(entry)
    return entry.pop("name"), entry


class StrategyStep:
    """A combiner and regularisers for a loop you write (module docstring)."""

    def __init__(self, *, tasks: Iterable[str], shared: Iterable[nn.Parameter],
                 heads: Mapping[str, Iterable[nn.Parameter]] | None = None, combiner="sum",
                 regularizers: Iterable = (), freezing=None, model: nn.Module | None = None, seed: int = 0,
                 precision: str = "fp32", device: torch.device | str | None = None):
        if precision not in ("fp32", "bf16"):
            raise UserError(f"precision {precision!r}: the own-loop step takes fp32 or bf16 (fp16 loss scaling "
                            "needs the harness's optimizer step)")
        self.tasks = list(tasks)
        self.shared = [p for p in shared]
        self.heads = {task: list(params) for task, params in (heads or {}).items()}
        name, options = _spec(combiner)
        self.combiner = registry.build("combiner", name, options, self.tasks, torch.Generator().manual_seed(seed),
                                       where="combiner")
        self.regularizers = [registry.build("regularizer", *_spec(entry), torch.Generator().manual_seed(seed + 1 + i),
                                            where=f"regularizers[{i}]") for i, entry in enumerate(regularizers)]
        self.freezing = None
        if freezing is not None:  # it finds parameters by name: heads under `heads.<task>.`, BERT-style layers
            if model is None:
                raise UserError("freezing: a freezing schedule needs the model whose parameters it freezes (model=...)")
            self.freezing = registry.build("freezing", *_spec(freezing), model, where="freezing")
        self.pipeline = StepPipeline(precision, torch.device(device) if device else None)
        self.learning_rate = 0.0  # set it for methods that take a virtual step (Auto-Lambda)

    def optimizer_groups(self, lr: float, weight_decay: float = 0.0, device: torch.device | str = "cpu") -> list[dict]:
        """Your optimizer's parameter groups: the freezing schedule's (learning-rate scales, no decay on
        biases and norms), if there is one, and those the combiner learns (uncertainty weighting)."""
        groups = self.freezing.parameter_groups(lr, weight_decay) if self.freezing else []
        return groups + self.combiner.optimizer_groups(lr, torch.device(device))

    def backward(self, losses: Mapping[str, Tensor | TaskInputs], extra: list[Mapping[str, Tensor]] | None = None
                 ) -> dict[str, Tensor]:
        """The step's gradients into `.grad`; returns each task's own loss (detached). `extra`: the
        combiner's `extra_batches` more losses per task (double sampling, a held-out batch)."""
        self.pipeline.begin({})
        combined, own = {}, {}
        for task, value in losses.items():
            combined[task], own[task] = self._loss(task, value)
        shared = [p for p in self.shared if p.requires_grad]
        heads = {task: [p for p in params if p.requires_grad] for task, params in self.heads.items()}
        self.combiner.prepare(StepInputs((lambda: list(extra)) if extra else None, self.learning_rate, None))
        self.combiner.backward(combined, shared, heads, self.pipeline)
        return own

    def after_step(self, losses_before: Mapping[str, Tensor], losses_after: Callable[[], Mapping[str, Tensor]]) -> None:
        """After your optimizer step: for methods that compare the losses before and after (FAMO)."""
        self.combiner.after_step(losses_before, losses_after)

    def _loss(self, task: str, value) -> tuple[Tensor, Tensor]:
        if not isinstance(value, TaskInputs):
            if self.regularizers:
                raise UserError(f"task '{task}': regularisers need TaskInputs (embeddings and the forward), not a loss")
            return value, value.detach()
        if not value.embeddings.requires_grad:  # a frozen embedding table: a perturbation still needs dL/de
            value.embeddings.requires_grad_(True)
        loss, logits = value.forward(value.embeddings)
        parameters = [p for p in self.shared + self.heads.get(task, []) if p.requires_grad]
        clean = CleanBackward(loss, value.embeddings, parameters, retain_graph=True)
        step = TaskStep(task=task, loss=loss, pooled=value.pooled, labels=value.labels,
                        input_embeddings=value.embeddings, padding_mask=value.padding_mask,
                        loss_from_embeddings=lambda e: value.forward(e)[0], spec=value.spec, logits=logits,
                        outputs_from_embeddings=value.forward, input_gradient=clean.input_gradient,
                        parameters=parameters)
        terms = [term for regularizer in self.regularizers for term in regularizer.terms(step).values()]
        return clean.loss_for_combiner(terms), loss.detach()
