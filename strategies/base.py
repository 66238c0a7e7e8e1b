"""The step contract between the trainer and strategies.

One training step:
1. the `Sampler` names the tasks whose next batch this step uses;
2. the model yields each task's loss;
3. each `Regularizer` adds terms per task (it gets a `TaskStep`: the loss, the pooled vectors and
   a closure that re-runs the task's loss from perturbed input embeddings);
4. the `Combiner` turns the per-task losses into gradients in `.grad`, knowing which parameters
   are shared (encoder) and which belong to one task (its head);
5. the `FreezingSchedule` decides, at epoch and step boundaries, what is trainable and the
   optimizer's parameter groups.
Regularisers act before the combiner, so any regulariser composes with any combiner. Mixed
precision and data parallelism stay out of the strategies: the trainer passes the combiner's
`backward` the step's `GradientPipeline`, which unscales and averages gradients before any method
reads them.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from mtlbench.strategies import state
from mtlbench.tasks.spec import TaskSpec
from torch import Tensor, nn


class Strategy:
    name: ClassVar[str]
    axis: ClassVar[str]

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any):
        self.options = options

    def state_dict(self) -> dict:
        """What a checkpoint keeps: every attribute training changes (generators, statistics,
        learned weights, an own optimizer), found generically (strategies.state). Override only
        for state held in something else."""
        return state.attributes(self, state.NOT_STATE)

    def load_state_dict(self, saved: dict, device: torch.device | None = None) -> None:
        state.restore_attributes(self, saved, device or torch.device("cpu"))


class Sampler(Strategy, ABC):
    """Names, for each step of an epoch, the tasks whose next batch the step uses."""

    single_task: ClassVar[bool] = True  # every step holds exactly one task

    def __init__(self, options, batches_per_epoch: Mapping[str, int], sizes: Mapping[str, int],
                 generator: random.Random, epochs: int = 1):
        super().__init__(options)
        self.tasks = list(batches_per_epoch)
        self.batches_per_epoch = dict(batches_per_epoch)
        self.sizes = dict(sizes)
        self.generator = generator
        self.epochs = epochs  # of the run: schedules that change over training need it

    @abstractmethod
    def steps_per_epoch(self) -> int:
        ...

    @abstractmethod
    def epoch(self, number: int = 1) -> Iterator[tuple[str, ...]]:
        """The tasks of each step of epoch `number` (1-based)."""

    def fraction(self, number: int, step: int) -> float:
        """The fraction of training done before step `step` (0-based) of epoch `number`: t in [0, 1)."""
        return ((number - 1) * self.steps_per_epoch() + step) / (self.epochs * self.steps_per_epoch())


class RandomTaskSampler(Sampler):
    """One task per step, drawn i.i.d. from `task_weights`; an epoch has as many steps as all tasks
    have batches, so every sampler spends the same number of task batches per epoch."""

    # Whether the weights change within an epoch (with the training fraction t): then they are
    # asked for at every step, otherwise once per epoch.
    varies_within_epoch: ClassVar[bool] = False

    @abstractmethod
    def task_weights(self, epoch: int, fraction: float) -> dict[str, float]:
        """Unnormalised sampling weights at this point of training: `epoch` (1-based) and the
        fraction t in [0, 1) of all training steps done."""

    def probabilities(self, epoch: int = 1, fraction: float = 0.0) -> dict[str, float]:
        weights = self.task_weights(epoch, fraction)
        total = sum(weights.values())
        return {task: w / total for task, w in weights.items()}

    def steps_per_epoch(self) -> int:
        return sum(self.batches_per_epoch.values())

    def epoch(self, number: int = 1) -> Iterator[tuple[str, ...]]:
        for step in range(self.steps_per_epoch()):
            if step == 0 or self.varies_within_epoch:
                probabilities = self.probabilities(number, self.fraction(number, step))
                tasks, weights = list(probabilities), list(probabilities.values())
            yield (self.generator.choices(tasks, weights)[0],)


class GradientPipeline:
    """What the trainer does to gradients before a combiner reads them; this base is the identity
    (fp32, one process: `IDENTITY_PIPELINE`), for a combiner stepped outside the trainer.

    The trainer's pipeline (bench.precision.StepPipeline) hands the combiner each task's loss times
    a multiplier (fp16: the loss scale; data parallel: the rank's share of the batch). A combiner
    that takes per-task gradients passes them through `per_task` - divided back, averaged over the
    ranks in one collective, checked - before it forms the Gramian; then `.grad` is final. After a
    combiner's plain backward the trainer does the same to `.grad` once. `loss_values` are the
    tasks' loss values, unscaled and over the whole (global) batch: what loss-based weights use.
    """

    compute_eps: float = 0.0  # precision of the autocast dtype (bf16, fp16): rank decisions trust no more

    def loss_scale(self) -> float:
        return 1.0

    def per_task(self, matrix: Tensor, heads: dict[str, list[Tensor | None]]
                 ) -> tuple[Tensor, dict[str, list[Tensor | None]]]:
        return matrix, heads

    def loss_values(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {task: loss.detach() for task, loss in losses.items()}


IDENTITY_PIPELINE = GradientPipeline()  # fp32 losses of one process: gradients as they are


@dataclass
class StepInputs:
    """What the step hands a combiner besides the losses (`Combiner.prepare`), each made on demand.

    `extra_losses()`: for each of the combiner's `extra_batches` more batches per task, drawn from
    the training split by a stream of their own (never dev), each task's loss on it (times the
    pipeline's multiplier, in the graph): double sampling (SDMGrad, MoDo), Auto-Lambda's held-out
    batch. `learning_rate`: the optimizer's current base rate (Auto-Lambda's virtual step).
    `representations`: each task's representation, the tensor its head reads (pooled vectors, or
    the encoder's output states for token kinds), in the graph: `on = "representation"`."""

    extra_losses: Callable[[], list[dict[str, Tensor]]] | None = None
    learning_rate: float = 0.0
    representations: Mapping[str, Tensor] | None = None


class Combiner(Strategy, ABC):
    """Turns per-task losses into gradients on the model's parameters (left in `.grad`)."""

    needs_several_tasks: ClassVar[bool] = False  # meaningless when a step holds one task
    # More batches per task per step than the step's own, from the training split (StepInputs).
    extra_batches: ClassVar[int] = 0
    # Needs each task's representation in the graph (StepInputs.representations) this run.
    needs_representations: bool = False
    # The static-weight sum whose `weights` option ({task: weight}) spans the scalarisation front
    # (bench.front): exactly one registered combiner says so.
    scalarisation: ClassVar[bool] = False

    def __init__(self, options, tasks: Sequence[str], generator: torch.Generator):
        super().__init__(options)
        self.tasks = list(tasks)
        self.generator = generator

    @abstractmethod
    def backward(self, losses: Mapping[str, Tensor], shared: Sequence[nn.Parameter],
                 task_specific: Mapping[str, Sequence[nn.Parameter]], pipeline: GradientPipeline) -> None:
        """Leave the step's gradients in `.grad`. `losses` are each task's loss times
        `pipeline`'s multiplier: take per-task gradients through `pipeline.per_task` (as
        strategies.gradients.task_gradients does) and loss values from `pipeline.loss_values`; after
        a plain backward of a weighted sum, the trainer reduces `.grad` itself."""

    def prepare(self, inputs: StepInputs) -> None:
        """Called by the step before `backward` with what else the step offers."""
        self.step_inputs = inputs

    def task_rows(self, tasks: Sequence[str]) -> list[int]:
        """Each task's index in the run's task list: where a method keeps its per-task state."""
        return [self.tasks.index(task) for task in tasks]

    def optimizer_groups(self, lr: float, device: torch.device) -> list[dict]:
        """Parameter groups the combiner learns jointly with the model (uncertainty weighting's
        log-variances), placed on `device`; the trainer adds them to its optimizer. None by default:
        methods with their own optimizer (FAMO) keep it to themselves."""
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (1-based)."""

    def after_step(self, losses_before: Mapping[str, Tensor], losses_after: Callable[[], Mapping[str, Tensor]]) -> None:
        """Called after the optimizer step with each task's own loss of this step (detached, without
        regularisers' terms) and `losses_after()`, which evaluates the same losses again at the
        updated parameters (one forward per task, no graph); a combiner that does not call it costs
        nothing extra."""

    def fixed_loss_weights(self) -> Mapping[str, float] | None:
        """The weights w_t if `backward` is exactly the backward of sum_t w_t * L_t with weights
        known before the step (sum, static weights); None if they depend on the losses or their
        gradients. With fixed weights, a regulariser that needs the clean backward anyway (FGM, PGD)
        has it put the clean gradient straight into `.grad`, as the textbook implementation does."""
        return None

    def summary(self) -> dict:
        """What the run record keeps of this combiner (weights, statistics)."""
        return {}

    def step_scalars(self) -> dict[str, float]:
        """The last step's task weights and pair cosines by name ("weight/sst", "cosine/sst|sts"),
        where the method computes them: what a tracker shows step by step."""
        return dict(getattr(self, "latest", {}))


@dataclass
class TaskStep:
    """What a regulariser is handed for one task batch."""

    task: str
    loss: Tensor
    pooled: Tensor  # pooled sentence vectors; pair tasks: [2B, H], first B are side A
    labels: Tensor
    input_embeddings: Tensor  # word embeddings fed to the encoder, in the graph: perturb with a detached r
    padding_mask: Tensor  # 1 on real tokens
    loss_from_embeddings: Callable[[Tensor], Tensor]  # the task loss with these embeddings instead
    spec: TaskSpec | None = None  # the task's kind and labels (None only in hand-built steps)
    logits: Tensor | None = None  # the clean logits (in the graph)
    outputs_from_embeddings: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None  # (loss, logits)
    # The gradient of the clean loss w.r.t. the input embeddings. It comes from the one backward
    # that also yields the parameters' gradients, so asking for it costs no extra pass.
    input_gradient: Callable[[], Tensor] | None = None
    parameters: Sequence[nn.Parameter] = ()  # the trainable parameters this task's loss reaches


class _StoredGradient(torch.autograd.Function):
    """One autograd node: forward returns the stored value, backward the stored gradients times the
    upstream scalar (one fused multiply for all parameters, not two small ops per parameter)."""

    @staticmethod
    def forward(ctx, value, gradients, *parameters):
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        present = [g for g in ctx.gradients if g is not None]
        scaled = iter(torch._foreach_mul(present, upstream) if present else [])
        return (None, None, *[None if g is None else next(scaled) for g in ctx.gradients])


def with_gradient(value: Tensor, parameters: Sequence[nn.Parameter], gradients: Sequence[Tensor | None]) -> Tensor:
    """A scalar equal to `value` whose gradient w.r.t. `parameters` is `gradients`: lets a term whose
    gradients were already taken in a backward it needed anyway skip a second backward."""
    return _StoredGradient.apply(value.detach(), tuple(gradients), *parameters)  # no edge into value's graph


class Regularizer(Strategy, ABC):
    """Adds loss terms for a task batch before the combiner runs. Counts the forward and backward
    passes it makes beyond the step's own clean forward and backward."""

    # Works on the two sides' pooled vectors of a pair task: the suite needs a pair task, and a
    # bi-encoder pair head (checked when the suite is loaded, before any training).
    needs_bi_encoder_pairs: ClassVar[bool] = False
    # Whether a term reaches into the clean forward's graph (`loss`, `pooled`, `logits`). If none of
    # a step's regularisers does, the clean graph is freed by the backward that gives
    # `input_gradient`, and `input_embeddings` is a lookup of its own.
    uses_clean_graph: ClassVar[bool] = True

    def __init__(self, options, generator: torch.Generator):
        super().__init__(options)
        self.generator = generator
        self.extra_forward_passes = 0
        self.extra_backward_passes = 0

    @abstractmethod
    def terms(self, step: TaskStep) -> Mapping[str, Tensor]:
        """Named scalar terms added to the task's loss."""

    def summary(self) -> dict:
        return {"extra_forward_passes": self.extra_forward_passes,
                "extra_backward_passes": self.extra_backward_passes}


_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


class FreezingSchedule(Strategy, ABC):
    """Decides which parameters train, and their learning rates, over the run.

    Frozen parameters get `requires_grad = False`: they receive no gradient, and AdamW skips a
    parameter without a gradient entirely (no update, no weight decay, no moment decay), so they
    stay bit-for-bit unchanged. `changes` counts changes of the trainable set, for the record.
    """

    def __init__(self, options, model: nn.Module):
        super().__init__(options)
        self.model = model
        self.changes = 0

    # --- where a parameter sits, by name (BERT-style encoders; `heads.<task>.` for the heads) ---
    @staticmethod
    def head_task(name: str) -> str | None:
        return name.split(".")[1] if name.startswith("heads.") else None

    @staticmethod
    def layer_index(name: str) -> int | None:
        match = _LAYER.search(name)
        return int(match.group(1)) if match and not name.startswith("heads.") else None

    @staticmethod
    def is_embedding(name: str) -> bool:
        return not name.startswith("heads.") and "embed" in name

    def num_layers(self) -> int:
        return 1 + max((i for n, _ in self.model.named_parameters() if (i := self.layer_index(n)) is not None),
                       default=-1)

    def set_trainable(self, trainable: Callable[[str], bool]) -> None:
        changed = False
        for name, parameter in self.model.named_parameters():
            wanted = bool(trainable(name))
            if parameter.requires_grad != wanted:
                parameter.requires_grad_(wanted)
                changed = True
        self.changes += changed

    def lr_scale(self, name: str) -> float:
        """Multiplier of the base learning rate for this parameter."""
        return 1.0

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups by learning-rate scale; biases and norms are exempt from weight decay."""
        groups: dict[tuple[float, bool], list] = {}
        for name, parameter in self.model.named_parameters():
            groups.setdefault((self.lr_scale(name), name.endswith(_NO_DECAY)), []).append(parameter)
        return [{"params": params, "lr": lr * scale, "weight_decay": 0.0 if no_decay else weight_decay}
                for (scale, no_decay), params in groups.items()]

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step(self, step: int) -> None:
        pass

    def trainable(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]


class StagedSchedule(FreezingSchedule):
    """A schedule that moves through numbered stages, one per epoch or one per `every_steps` steps
    (its Options must define `every_steps`, 0 meaning per epoch)."""

    @abstractmethod
    def stage(self, stage: int) -> None:
        """Set what trains in this stage."""

    def on_epoch_start(self, epoch):
        if not self.options.every_steps:
            self.stage(epoch - 1)

    def on_step(self, step):
        if self.options.every_steps:
            self.stage(step // self.options.every_steps)
