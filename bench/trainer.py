"""Training and evaluation of one recipe with one seed. Knows the step contract, not strategies."""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bench import checkpoint, flops
from bench.data import TaskBatches, eval_batches
from bench.model import MultiTaskModel
from bench.parallel import SINGLE, Ranks
from bench.precision import MIN_LOSS_SCALE, PRECISIONS, SkippedStep, StepPipeline, StepTimer, all_finite
from strategies.base import Combiner, FreezingSchedule, Regularizer, Sampler, TaskStep, with_gradient
from tasks.metrics import score
from tasks.spec import TaskSpec


@dataclass
class TrainSettings:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    dropout: float = 0.1
    single_head: str = "linear"
    device: str = "auto"
    # Intra-op CPU threads per run. Part of the setting: the float results of a run depend on it
    # (measured: 30 steps with 1 vs 2 threads end 0.1 apart in some weight), so it is fixed, not
    # derived from the core count, and several runs go side by side instead (`--jobs`).
    threads: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the forwards (bench.precision)

    def __post_init__(self):
        """Ranges, so that a bad value fails when the suite is read, not after training."""
        for name in ("epochs", "batch_size", "eval_batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "dropout"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0 (max_grad_norm 0: no clipping)")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio is a fraction of the steps, from 0 to 1; got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', "
                                 f"got {self.device!r}") from None
            if device.type not in ("cpu", "cuda", "mps"):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def report(self) -> dict:
        source = "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_rss_sampled"
        return {"peak_memory_mb": self.peak_bytes / 2**20,
                "peak_memory_increase_mb": (self.peak_bytes - self.start_bytes) / 2**20,
                "memory_source": source}


def split_predictions(model: MultiTaskModel, task: str, dataset, batch_size: int, pad_id: int,
                      device: torch.device, ranks: Ranks = SINGLE, pipeline: StepPipeline | None = None
                      ) -> tuple[list, list | None]:
    """Per row of `dataset`, in its order: the prediction and the gold label (None if unlabelled).
    Data parallel: each rank predicts a contiguous shard, and every rank gets all the rows."""
    spec = model.specs[task]
    lo, hi = ranks.bounds(len(dataset))
    shard = dataset.select(range(lo, hi)) if ranks.active else dataset
    predictions, golds = [None] * len(shard), [None] * len(shard)
    labelled = True
    for indices, batch in eval_batches(shard, spec, batch_size, pad_id) if len(shard) else ():
        batch = {k: v.to(device) for k, v in batch.items()}
        with pipeline.autocast() if pipeline else contextlib.nullcontext():
            predicted, gold = model.predict(task, batch)
        labelled = labelled and gold is not None
        for position, i in enumerate(indices):
            predictions[i] = predicted[position]
            golds[i] = gold[position] if gold is not None else None
    if ranks.active:
        parts = ranks.gather((predictions, golds, labelled))
        predictions = [p for part in parts for p in part[0]]
        golds = [g for part in parts for g in part[1]]
        labelled = all(part[2] for part in parts)
    if "label" in dataset.column_names:  # the stored labels, not their float32 tensor copies
        return predictions, list(dataset["label"])
    return predictions, golds if labelled else None


@torch.inference_mode()
def evaluate(model: MultiTaskModel, datasets: dict, specs: dict[str, TaskSpec], batch_size: int, pad_id: int,
             device: torch.device, progress: bool = False, keep: dict | None = None,
             unlabelled=frozenset(), golds: dict | None = None, ranks: Ranks = SINGLE,
             pipeline: StepPipeline | None = None) -> tuple[dict, dict]:
    """Metrics per task (empty for an unlabelled split), and evaluation throughput. With `keep`, each
    task's per-row predictions go into `keep[task]`; with `golds`, its gold labels into `golds[task]`.
    Sharded over `ranks`, under the `pipeline`'s autocast."""
    model.eval()
    metrics, examples, start = {}, 0, time.perf_counter()
    for task, dataset in tqdm(datasets.items(), desc="eval", leave=False, disable=not progress or None):
        spec = specs[task]
        predictions, gold = split_predictions(model, task, dataset, batch_size, pad_id, device, ranks, pipeline)
        metrics[task] = {} if gold is None or task in unlabelled else score(spec, predictions, gold)
        if keep is not None:
            keep[task] = predictions
        if golds is not None:
            golds[task] = gold
        examples += len(dataset)
    seconds = time.perf_counter() - start
    return metrics, {"examples": examples, "seconds": seconds, "examples_per_second": examples / seconds}


def best_epoch(history: list[dict], task: str, primary: str) -> int:
    """The epoch of the task's best dev score (the later one on a tie; the last if every score is NaN)."""
    scored = [(h["dev"][task][primary], h["epoch"]) for h in history if not math.isnan(h["dev"][task][primary])]
    return max(scored)[1] if scored else history[-1]["epoch"]


class Diverged(Exception):
    """A non-finite loss or gradient: the run stops; its record says where."""

    def __init__(self, what: str, task: str | None, epoch: int, step: int, outcome: TrainOutcome | None = None):
        super().__init__(what)
        self.what, self.task, self.epoch, self.step, self.outcome = what, task, epoch, step, outcome

    def __str__(self) -> str:
        place = f"task '{self.task}', " if self.task else ""
        return f"{self.what} at {place}epoch {self.epoch}, step {self.step}"

    def as_dict(self) -> dict:
        return {"what": self.what, "task": self.task, "epoch": self.epoch, "step": self.step}


@dataclass
class Strategies:
    """Built strategy objects for one run (see strategies.base for the contract)."""

    sampler: Sampler
    combiner: Combiner
    regularizers: list[Regularizer]
    freezing: FreezingSchedule


@dataclass
class TrainOutcome:
    history: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    trainable: list[dict] = field(default_factory=list)
    test_at_best_dev: dict = field(default_factory=dict)  # task -> {"epoch", metrics...}
    predictions: dict = field(default_factory=dict)  # task -> split -> per-row predictions (best dev epoch)
    # Per-row dev predictions and gold labels, for paired significance tests between runs:
    # {"last" | "best": {task: (predictions, golds)}}
    dev_examples: dict = field(default_factory=lambda: {"last": {}, "best": {}})


class _CleanBackward:
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


def _regularized_loss(model: MultiTaskModel, regularizers: list[Regularizer], task: str,
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
    clean = _CleanBackward(output.loss, embeddings, parameters, clean_graph_used, fixed_weight, multiplier)
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
                  shares: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """One step of the contract: each task's loss plus its regulariser terms, the combiner's
    backward, clipping (before the step), the optimizer step. Returns each task's own loss, detached
    (over the whole batch: data parallel, `batches` are this rank's shards, `shares` their fractions).

    `pipeline` (default: fp32, one process) sets the precision and the ranks: every loss is
    multiplied by its factor, and the gradients are unscaled and averaged before the combiner
    reads them (per task) or after its plain backward. fp16: a step whose gradients overflow is
    skipped (no update, no schedule step) and counted in the pipeline."""
    pipeline = pipeline or StepPipeline()
    pipeline.begin(shares or {})
    combiner = strategies.combiner
    combiner.pipeline = pipeline
    losses, task_losses = {}, {}
    weights = combiner.fixed_loss_weights() if strategies.regularizers else None
    with pipeline.autocast():
        for task, batch in batches.items():
            multiplier = pipeline.multiplier(task)
            if strategies.regularizers:
                losses[task], task_losses[task] = _regularized_loss(model, strategies.regularizers, task, batch,
                                                                    weights[task] if weights else None, multiplier)
            else:
                loss = model(task, batch).loss
                task_losses[task] = loss.detach()
                losses[task] = loss if multiplier == 1.0 else multiplier * loss
    task_losses = pipeline.global_values(task_losses)
    try:
        _check_finite(losses, "loss", pipeline.ranks)  # with the regularisers' terms
        combiner.backward(losses, model.shared_parameters(), model.task_parameters())
        if pipeline.changes_gradients:
            pipeline.reduce_grads([p for group in optimizer.param_groups for p in group["params"]])
        # The norm is needed anyway for clipping; an infinite limit measures without clipping.
        finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)))
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
            raise Diverged(f"non-finite gradient at every fp16 loss scale down to {pipeline.loss_scale()}", None, 0, 0)
        return task_losses
    if not finite:
        raise Diverged("non-finite gradient (after the combiner)", None, 0, 0)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    optimizer.zero_grad(set_to_none=True)

    def losses_after() -> dict[str, torch.Tensor]:
        with pipeline.autocast():
            return pipeline.global_values(_losses_now(model, batches), keep=False)

    combiner.after_step(task_losses, losses_after)
    return task_losses


def _check_finite(losses: dict[str, torch.Tensor], what: str, ranks: Ranks = SINGLE) -> None:
    """One device read for all tasks. Data parallel: summed over the ranks first (a non-finite value
    anywhere makes the sum non-finite), so that every rank stops together."""
    values = ranks.sum_(torch.stack([loss.detach().float() for loss in losses.values()]))
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        task = list(losses)[int((~finite).nonzero()[0])]
        raise Diverged(f"non-finite {what} ({values[list(losses).index(task)].item()})", task, 0, 0)


@torch.no_grad()
def _losses_now(model: MultiTaskModel, batches: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Each task's loss on its batch at the current parameters, without a graph."""
    return {task: model(task, batch).loss for task, batch in batches.items()}


def _score_at_best(model: MultiTaskModel, outcome: TrainOutcome, dev_predictions: dict | None, test_sets: dict,
                   unlabelled_test, settings: TrainSettings, pad_id: int, device: torch.device, keep: bool,
                   ranks: Ranks = SINGLE, pipeline: StepPipeline | None = None) -> None:
    """After an epoch's dev scores: test (and predictions) for each task whose dev score is now its best."""
    epoch = outcome.history[-1]["epoch"]
    for task, spec in model.specs.items():
        if best_epoch(outcome.history, task, spec.primary_metric) != epoch:
            continue
        if task in outcome.dev_examples["last"]:
            outcome.dev_examples["best"][task] = outcome.dev_examples["last"][task]
        if keep:
            outcome.predictions[task] = {"dev": dev_predictions[task]}
        if task in test_sets:
            found = {}
            test_metrics, _ = evaluate(model, {task: test_sets[task]}, model.specs, settings.eval_batch_size, pad_id,
                                       device, keep=found, unlabelled=unlabelled_test, ranks=ranks, pipeline=pipeline)
            outcome.test_at_best_dev[task] = {"epoch": epoch, **test_metrics[task]}
            if keep:
                outcome.predictions[task]["test"] = found[task]
    model.train()


def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one kernel for all parameters; measured on CPU: 0.27 ms a step
    against 1.2 ms for foreach, 1880 steps a quick-suite run), or foreach where fused is missing."""
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True)


def train(model: MultiTaskModel, strategies: Strategies, train_sets: dict[str, TaskBatches], dev_sets: dict,
          settings: TrainSettings, device: torch.device, pad_id: int, progress: bool = True,
          test_sets: dict | None = None, unlabelled_test=frozenset(), keep_predictions: bool = False,
          resume: dict | None = None, on_epoch_end: Callable[[int, Callable[[], dict]], None] | None = None,
          ranks: Ranks = SINGLE) -> TrainOutcome:
    """Train for `settings.epochs`, scoring dev after each. With `test_sets`, each task's test split
    is scored with the weights of its best dev epoch: whenever a task's dev score reaches a new best,
    its test split is scored then (so no copy of the weights is kept), and the last such score stays.
    `keep_predictions`: the per-row dev and test predictions of that epoch too.

    `on_epoch_end(epoch, state)` is called after each epoch's evaluation; `state()` gives everything
    but the weights that continuing needs, and `resume` (such a state, with the weights already in
    `model`) continues from there: the rest of the run is the same as if it had not stopped.
    A non-finite loss or gradient raises `Diverged`, holding the outcome so far.

    `ranks` (bench.parallel): this process's shard of every batch and of evaluation; every rank
    ends with the same weights and the same outcome. `settings.precision`: bench.precision."""
    outcome = TrainOutcome()
    model.to(device)
    ranks.parameters_from_rank0(model)
    pipeline = StepPipeline(settings.precision, device, ranks)
    timer = StepTimer(device)
    freezing = strategies.freezing
    optimizer = make_optimizer(freezing.parameter_groups(settings.lr, settings.weight_decay)
                               + strategies.combiner.optimizer_groups(settings.lr, device))
    steps_per_epoch = strategies.sampler.steps_per_epoch()
    total_steps = steps_per_epoch * settings.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    streams = {task: batches.stream() for task, batches in train_sets.items()}
    counters = {"step": 0, "examples": 0, "step_seconds": [], "seen_changes": -1, "model_flops": 0.0}
    flop_costs = flops.per_token(model)
    specs = model.specs
    first_epoch = 1
    if resume is not None:
        first_epoch = _restore(resume, model, optimizer, schedule, strategies, train_sets, streams, outcome,
                               counters, device) + 1
        pipeline.load_state_dict(resume.get("pipeline", {}))
        timer.seconds = counters["step_seconds"]

    def note_trainable(epoch: int) -> None:  # the record says which parameters trained when
        if freezing.changes != counters["seen_changes"]:
            counters["seen_changes"] = freezing.changes
            names = freezing.trainable()
            outcome.trainable.append({"epoch": epoch, "step": counters["step"], "parameters": len(names),
                                      "names": names})

    with PeakMemory(device) as memory:
        for epoch in range(first_epoch, settings.epochs + 1):
            freezing.on_epoch_start(epoch)
            strategies.combiner.on_epoch_start(epoch)
            note_trainable(epoch)
            # Summed on the device and read once per epoch: .item() per step would sync CUDA every step.
            loss_sums, loss_counts = {}, defaultdict(int)
            model.train()
            bar = tqdm(strategies.sampler.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch}/{settings.epochs}",
                       leave=False, disable=not progress or None)
            for step_tasks in bar:
                freezing.on_step(counters["step"])
                note_trainable(epoch)
                started = timer.start()
                batches, shares = {}, {}
                for task in step_tasks:
                    batch = next(streams[task])
                    counters["examples"] += batch["labels"].shape[0]  # the whole batch, over all ranks
                    counters["model_flops"] += flops.batch_flops(flop_costs, batch["input_ids"])
                    batch, shares[task] = ranks.shard(batch)
                    batches[task] = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                try:
                    task_losses = training_step(model, strategies, batches, optimizer, schedule,
                                                settings.max_grad_norm, pipeline, shares)
                except Diverged as diverged:
                    diverged.epoch, diverged.step, diverged.outcome = epoch, counters["step"] + 1, outcome
                    raise
                timer.stop(started)
                counters["step"] += 1
                for task, loss in task_losses.items():
                    loss_sums[task] = loss_sums.get(task, 0) + loss
                    loss_counts[task] += 1
            counters["step_seconds"] = timer.drain()
            dev_predictions, dev_golds = {}, {}
            metrics, eval_info = evaluate(model, dev_sets, specs, settings.eval_batch_size, pad_id, device, progress,
                                          keep=dev_predictions, golds=dev_golds, ranks=ranks, pipeline=pipeline)
            outcome.dev_examples["last"] = {t: (dev_predictions[t], dev_golds[t]) for t in dev_golds
                                            if dev_golds[t] is not None}
            outcome.history.append({
                "epoch": epoch, "step": counters["step"], "dev": metrics,
                "train_loss": {t: loss_sums[t].item() / loss_counts[t] for t in loss_sums},
            })
            outcome.eval = eval_info
            _score_at_best(model, outcome, dev_predictions, test_sets or {}, unlabelled_test, settings, pad_id,
                           device, keep_predictions, ranks, pipeline)
            if on_epoch_end is not None:
                on_epoch_end(epoch, lambda: {**_training_state(model, optimizer, schedule, strategies, train_sets,
                                                               streams, outcome, counters),
                                             "pipeline": pipeline.state_dict()})
    step_seconds = counters["step_seconds"]
    train_seconds = sum(step_seconds)  # steps include fetching their batches, exclude evaluation
    outcome.train = {
        "examples": counters["examples"], "steps": counters["step"], "steps_per_epoch": steps_per_epoch,
        "seconds": train_seconds,
        "examples_per_second": counters["examples"] / train_seconds if train_seconds else float("nan"),
        "step_seconds_median": statistics.median(step_seconds) if step_seconds else float("nan"),
        "step_timing": "cuda_events" if timer.cuda else "wall_clock",
        **flops.summary(counters["model_flops"], train_seconds, device, settings.precision),
        **pipeline.summary(),
        **({"resumed_from_epoch": first_epoch - 1} if resume is not None else {}),
    }
    outcome.memory = memory.report()
    return outcome


def _training_state(model, optimizer, schedule, strategies: Strategies, train_sets, streams, outcome: TrainOutcome,
                    counters: dict) -> dict:
    """Everything but the weights that the rest of the run depends on (see `train`)."""
    return {
        "epoch": outcome.history[-1]["epoch"],
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": checkpoint.global_rng_state(),
        "streams": {t: {"shuffle": train_sets[t].generator.get_state(), **streams[t].state_dict()} for t in streams},
        "strategies": {"sampler": strategies.sampler.state_dict(), "combiner": strategies.combiner.state_dict(),
                       "regularizers": [r.state_dict() for r in strategies.regularizers],
                       "freezing": strategies.freezing.state_dict()},
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        "outcome": {"history": outcome.history, "trainable": outcome.trainable,
                    "test_at_best_dev": outcome.test_at_best_dev, "predictions": outcome.predictions,
                    "dev_examples": {which: {t: list(pair) for t, pair in found.items()}
                                     for which, found in outcome.dev_examples.items()}},
        "counters": {**counters, "step_seconds": list(counters["step_seconds"])},
    }


def _restore(state: dict, model, optimizer, schedule, strategies: Strategies, train_sets, streams,
             outcome: TrainOutcome, counters: dict, device: torch.device) -> int:
    """Put a `_training_state` back; returns the epoch it was taken after."""
    trainable = set(state["trainable"])
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    saved = state["strategies"]
    strategies.sampler.load_state_dict(saved["sampler"], device)
    strategies.combiner.load_state_dict(saved["combiner"], device)
    for regularizer, regularizer_state in zip(strategies.regularizers, saved["regularizers"], strict=True):
        regularizer.load_state_dict(regularizer_state, device)
    strategies.freezing.load_state_dict(saved["freezing"], device)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    for task, stream_state in state["streams"].items():
        train_sets[task].generator.set_state(stream_state["shuffle"])
        streams[task].load_state_dict(stream_state)
    kept = state["outcome"]
    outcome.history, outcome.trainable = kept["history"], kept["trainable"]
    outcome.test_at_best_dev, outcome.predictions = kept["test_at_best_dev"], kept["predictions"]
    outcome.dev_examples = {which: {t: tuple(pair) for t, pair in found.items()}
                            for which, found in kept["dev_examples"].items()}
    counters.update(state["counters"])
    checkpoint.set_global_rng_state(state["rng"])
    return int(state["epoch"])
