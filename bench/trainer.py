"""The training loop of one run: epochs of steps (bench.step), dev scores after each, test at each
task's best dev epoch. Its state is one object (`LoopState`) that a checkpoint saves and restores
whole. Knows the step contract, not strategies."""

from __future__ import annotations

import contextlib
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
from mtlbench.bench import checkpoint, conflict_probe, flops, tracking
from mtlbench.bench.data import BatchStream, TaskBatches
from mtlbench.bench.evaluation import best_epoch, evaluate
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.parallel import SINGLE, Ranks
from mtlbench.bench.precision import StepPipeline, StepTimer
from mtlbench.bench.settings import TrainSettings
from mtlbench.bench.step import StepPlace, Strategies, make_optimizer, training_step
from mtlbench.bench.tracking import StepSeries, Trackers
from mtlbench.tasks.errors import UserError
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup


def select_device(name: str) -> torch.device:
    """The [train] device: `auto` is CUDA when there is one; a device named must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA devices" if torch.cuda.is_available() else "no CUDA device"
        raise UserError(f"[train] device = {name!r}: this machine has {found}; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"[train] device = {name!r}: MPS is not available here; use 'auto' or 'cpu'")
    return device


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
        self._stop, self._paused = threading.Event(), threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(self.interval):
            if not self._paused.is_set():
                self.peak_bytes = max(self.peak_bytes, self._rss())

    @contextlib.contextmanager
    def paused(self):
        """A block whose memory is not the run's own (the conflict probe's T gradient rows): left out
        of the peak. CUDA: the peak so far is kept and the allocator's restarts after the block; CPU:
        no samples during it (large tensors go back to the system when freed)."""
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._paused.set()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                self._paused.clear()

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
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def report(self) -> dict:
        source = "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_rss_sampled"
        return {"peak_memory_mb": self.peak_bytes / 2**20,
                "peak_memory_increase_mb": (self.peak_bytes - self.start_bytes) / 2**20,
                "memory_source": source}


@dataclass
class RunParts:
    """What one run trains and scores (bench.context.SuiteContext.build assembles it)."""

    model: MultiTaskModel
    strategies: Strategies
    train_sets: dict[str, TaskBatches]
    dev_sets: dict
    test_sets: dict = field(default_factory=dict)
    unlabelled_test: frozenset = frozenset()  # test splits without labels: predictions only
    pad_id: int = 0


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
    series: StepSeries | None = None  # the logged step scalars, thinned (only when tracking is on)


@dataclass
class LoopState:
    """Everything of the loop that moves as it trains, besides the weights, the optimizer, the
    schedule and the strategies: where it is, what it has counted, what it has found so far, and
    each task's batch stream."""

    streams: dict[str, BatchStream]
    # The combiner's extra batches per task per step (Combiner.extra_batches), each draw a stream of its own.
    extra_streams: list[dict[str, BatchStream]] = field(default_factory=list)
    outcome: TrainOutcome = field(default_factory=TrainOutcome)
    epoch: int = 0  # epochs completed
    step: int = 0
    examples: int = 0  # training examples seen, the whole batch over every rank
    extra_examples: int = 0  # of them, in the combiner's extra batches
    step_seconds: list[float] = field(default_factory=list)
    seen_changes: int = -1  # the freezing schedule's change count last recorded
    model_flops: float = 0.0

    COUNTERS = ("step", "examples", "extra_examples", "step_seconds", "seen_changes", "model_flops")

    def counters(self) -> dict:
        return {**{name: getattr(self, name) for name in self.COUNTERS}, "step_seconds": list(self.step_seconds)}

    def outcome_so_far(self) -> dict:
        outcome = self.outcome
        return {"history": outcome.history, "trainable": outcome.trainable,
                "test_at_best_dev": outcome.test_at_best_dev, "predictions": outcome.predictions,
                "dev_examples": {which: {t: list(pair) for t, pair in found.items()}
                                 for which, found in outcome.dev_examples.items()},
                "series": outcome.series.to_dict() if outcome.series else None}

    def load(self, saved: dict) -> None:
        """The counters and outcome of a `TrainingLoop.state_dict` (the streams load with their tasks)."""
        kept, outcome = saved["outcome"], self.outcome
        outcome.history, outcome.trainable = kept["history"], kept["trainable"]
        outcome.test_at_best_dev, outcome.predictions = kept["test_at_best_dev"], kept["predictions"]
        outcome.dev_examples = {which: {t: tuple(pair) for t, pair in found.items()}
                                for which, found in kept["dev_examples"].items()}
        outcome.series = StepSeries(0, kept["series"]) if kept.get("series") else None
        for name in self.COUNTERS:
            setattr(self, name, saved["counters"].get(name, getattr(self, name)))
        self.epoch = int(saved["epoch"])


class TrainingLoop:
    """Trains `parts` for `settings.epochs`, scoring dev after each epoch. With test sets, each
    task's test split is scored with the weights of its best dev epoch: whenever a task's dev score
    reaches a new best, its test split is scored then (so no copy of the weights is kept), and the
    last such score stays. `keep_predictions`: the per-row dev and test predictions of that epoch too.

    `ranks` (bench.parallel): this process's shard of every batch and of evaluation; every rank ends
    with the same weights and the same outcome. `settings.precision`: bench.precision. A non-finite
    loss or gradient raises bench.step.Diverged; `state.outcome` then holds the epochs before it."""

    def __init__(self, parts: RunParts, settings: TrainSettings, device: torch.device, ranks: Ranks = SINGLE,
                 progress: bool = False, keep_predictions: bool = False, trackers: Trackers | None = None,
                 log_every: int = 10):
        self.parts, self.settings, self.device, self.ranks = parts, settings, device, ranks
        self.trackers, self.log_every = trackers, log_every  # live scalars (bench.tracking); None: off
        self._logged = (0, time.perf_counter())  # examples and clock at the last log: examples/s between logs
        self.progress, self.keep_predictions = progress, keep_predictions
        model, strategies = parts.model, parts.strategies
        model.to(device)
        ranks.parameters_from_rank0(model)
        self.pipeline = StepPipeline(settings.precision, device, ranks)
        self.timer = StepTimer(device)
        self.optimizer = make_optimizer(strategies.freezing.parameter_groups(settings.lr, settings.weight_decay)
                                        + strategies.combiner.optimizer_groups(settings.lr, device))
        self.steps_per_epoch = strategies.sampler.steps_per_epoch()
        total_steps = self.steps_per_epoch * settings.epochs
        self.schedule = get_linear_schedule_with_warmup(self.optimizer, int(settings.warmup_ratio * total_steps),
                                                        total_steps)
        self.state = LoopState(streams={task: batches.stream() for task, batches in parts.train_sets.items()},
                               extra_streams=[{task: batches.independent(draw).stream()
                                               for task, batches in parts.train_sets.items()}
                                              for draw in range(strategies.combiner.extra_batches)])
        self.flop_costs = flops.per_token(model)
        self.probe = conflict_probe.probe_batches(parts.train_sets) if len(parts.train_sets) > 1 else []
        self.memory: PeakMemory | None = None  # the run's peak memory, while `run` trains
        self.resumed_from: int | None = None
        self.on_step: Callable[[int, int], None] | None = None  # (step, total steps): a progress display

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the weights that the rest of the run depends on."""
        parts, state = self.parts, self.state
        strategies = parts.strategies
        return {
            "epoch": state.epoch,
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "rng": checkpoint.global_rng_state(),
            "streams": {t: {"shuffle": parts.train_sets[t].generator.get_state(), **stream.state_dict()}
                        for t, stream in state.streams.items()},
            "extra_streams": [{t: {"shuffle": stream.batches.generator.get_state(), **stream.state_dict()}
                               for t, stream in streams.items()} for streams in state.extra_streams],
            "strategies": {"sampler": strategies.sampler.state_dict(), "combiner": strategies.combiner.state_dict(),
                           "regularizers": [r.state_dict() for r in strategies.regularizers],
                           "freezing": strategies.freezing.state_dict()},
            "trainable": [n for n, p in parts.model.named_parameters() if p.requires_grad],
            "outcome": state.outcome_so_far(),
            "counters": state.counters(),
            "pipeline": self.pipeline.state_dict(),
        }

    def load_state_dict(self, saved: dict) -> None:
        """Continue from a `state_dict` (the weights already in the model): the rest of the run is the
        same as if it had not stopped."""
        parts, device = self.parts, self.device
        trainable = set(saved["trainable"])
        for name, parameter in parts.model.named_parameters():
            parameter.requires_grad_(name in trainable)
        strategies, kept = parts.strategies, saved["strategies"]
        strategies.sampler.load_state_dict(kept["sampler"], device)
        strategies.combiner.load_state_dict(kept["combiner"], device)
        for regularizer, regularizer_state in zip(strategies.regularizers, kept["regularizers"], strict=True):
            regularizer.load_state_dict(regularizer_state, device)
        strategies.freezing.load_state_dict(kept["freezing"], device)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        for task, stream_state in saved["streams"].items():
            parts.train_sets[task].generator.set_state(stream_state["shuffle"])
            self.state.streams[task].load_state_dict(stream_state)
        for streams, saved_streams in zip(self.state.extra_streams, saved.get("extra_streams", []), strict=True):
            for task, stream_state in saved_streams.items():
                streams[task].batches.generator.set_state(stream_state["shuffle"])
                streams[task].load_state_dict(stream_state)
        self.state.load(saved)
        checkpoint.set_global_rng_state(saved["rng"])
        self.pipeline.load_state_dict(saved.get("pipeline", {}))
        self.timer.seconds = self.state.step_seconds
        self.resumed_from = self.state.epoch

    # --- the loop ------------------------------------------------------------------------------

    def run(self, on_epoch_end: Callable[[int, Callable[[], dict]], None] | None = None) -> TrainOutcome:
        """The remaining epochs. `on_epoch_end(epoch, state_dict)` is called after each epoch's
        evaluation; calling `state_dict()` gives what continuing needs (see `load_state_dict`)."""
        outcome = self.state.outcome
        with PeakMemory(self.device) as memory:
            self.memory = memory
            for epoch in range(self.state.epoch + 1, self.settings.epochs + 1):
                train_loss = self._train_epoch(epoch)
                self._score_epoch(epoch, train_loss)
                self.state.epoch = epoch
                if on_epoch_end is not None:
                    on_epoch_end(epoch, self.state_dict)
        outcome.train = self._train_summary()
        outcome.memory = memory.report()
        return outcome

    def _note_trainable(self, epoch: int) -> None:
        """The record says which parameters trained when."""
        freezing, state = self.parts.strategies.freezing, self.state
        if freezing.changes != state.seen_changes:
            state.seen_changes = freezing.changes
            names = freezing.trainable()
            elements = sum(p.numel() for p in self.parts.model.parameters() if p.requires_grad)
            state.outcome.trainable.append({"epoch": epoch, "step": state.step, "parameters": len(names),
                                            "elements": elements, "names": names})

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's steps; returns each task's mean training loss over them."""
        parts, state, strategies = self.parts, self.state, self.parts.strategies
        strategies.freezing.on_epoch_start(epoch)
        strategies.combiner.on_epoch_start(epoch)
        self._note_trainable(epoch)
        # Summed on the device and read once per epoch: .item() per step would sync CUDA every step.
        loss_sums, loss_counts = {}, defaultdict(int)
        parts.model.train()
        bar = tqdm(strategies.sampler.epoch(epoch), total=self.steps_per_epoch,
                   desc=f"epoch {epoch}/{self.settings.epochs}", leave=False, disable=not self.progress or None)
        for step_tasks in bar:
            strategies.freezing.on_step(state.step)
            self._note_trainable(epoch)
            started = self.timer.start()
            batches, shares = self._next_batches(step_tasks)
            extra = [self._next_batches(step_tasks, streams)[0] for streams in state.extra_streams]
            task_losses = training_step(parts.model, strategies, batches, self.optimizer, self.schedule,
                                        self.settings.max_grad_norm, self.pipeline, shares,
                                        at=StepPlace(epoch, state.step + 1), extra=extra)
            self.timer.stop(started)
            state.step += 1
            if self.trackers and state.step % self.log_every == 0:
                self._log_step(task_losses)
            if self.on_step is not None:
                self.on_step(state.step, self.steps_per_epoch * self.settings.epochs)
            for task, loss in task_losses.items():
                loss_sums[task] = loss_sums.get(task, 0) + loss
                loss_counts[task] += 1
        state.step_seconds = self.timer.drain()
        return {t: loss_sums[t].item() / loss_counts[t] for t in loss_sums}

    def _next_batches(self, step_tasks, streams: dict[str, BatchStream] | None = None
                      ) -> tuple[dict[str, dict], dict[str, float]]:
        """Each task's next batch (this rank's shard of it, on the device) and the shard's share;
        from `streams` (an extra draw) if given."""
        state, batches, shares = self.state, {}, {}
        for task in step_tasks:
            batch = next((streams or state.streams)[task])
            state.examples += batch["labels"].shape[0]  # the whole batch, over all ranks
            state.extra_examples += batch["labels"].shape[0] if streams else 0
            state.model_flops += flops.batch_flops(self.flop_costs, batch["input_ids"])
            batch, shares[task] = self.ranks.shard(batch)
            batches[task] = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batches, shares

    def _log_step(self, task_losses: dict[str, torch.Tensor]) -> None:
        scalars, outcome = self._step_scalars(task_losses), self.state.outcome
        if outcome.series is None:
            outcome.series = StepSeries(self.log_every)
        outcome.series.add(self.state.step, scalars)
        self.trackers.log(self.state.step, scalars)

    def _step_scalars(self, task_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """What a tracker shows of this step (read from the device only when logging)."""
        state, pipeline = self.state, self.pipeline
        rates = sorted({group["lr"] for group in self.optimizer.param_groups})
        examples, clock = self._logged
        now = time.perf_counter()
        self._logged = (state.examples, now)
        scalars = {**{f"loss/{task}": float(loss) for task, loss in task_losses.items()},
                   "lr": rates[-1], **({f"lr/{i}": rate for i, rate in enumerate(rates)} if len(rates) > 1 else {}),
                   "grad_norm": float(pipeline.grad_norm) if pipeline.grad_norm is not None else None,
                   "examples_per_second": (state.examples - examples) / (now - clock) if now > clock else None,
                   **self.parts.strategies.combiner.step_scalars()}
        if pipeline.scaler is not None:
            scalars.update({"loss_scale": pipeline.loss_scale(), "skipped_steps": pipeline.skipped_steps})
        return scalars

    def _score_epoch(self, epoch: int, train_loss: dict[str, float]) -> None:
        parts, outcome, settings = self.parts, self.state.outcome, self.settings
        dev_predictions, dev_golds = {}, {}
        metrics, eval_info = evaluate(parts.model, parts.dev_sets, parts.model.specs, settings.eval_batch_size,
                                      parts.pad_id, self.device, self.progress, keep=dev_predictions,
                                      golds=dev_golds, ranks=self.ranks, pipeline=self.pipeline)
        outcome.dev_examples["last"] = {t: (dev_predictions[t], dev_golds[t]) for t in dev_golds
                                        if dev_golds[t] is not None}
        with self.memory.paused() if self.memory is not None else contextlib.nullcontext():
            cosines = conflict_probe.gradient_cosines(parts.model, self.probe, self.device)
        outcome.history.append({"epoch": epoch, "step": self.state.step, "dev": metrics,
                                "train_loss": train_loss, **({"gradient_cosines": cosines} if cosines else {})})
        if self.trackers:
            self.trackers.log(self.state.step, {**tracking.flatten("dev", metrics),
                                                **tracking.flatten("epoch_train_loss", train_loss)})
            self.trackers.flush()  # before the epoch's checkpoint
        outcome.eval = eval_info
        self._score_at_best(epoch, dev_predictions)

    def _score_at_best(self, epoch: int, dev_predictions: dict) -> None:
        """After an epoch's dev scores: test (and predictions) for each task whose dev score is now its best."""
        parts, outcome, model = self.parts, self.state.outcome, self.parts.model
        for task, spec in model.specs.items():
            if best_epoch(outcome.history, task, spec.primary_metric) != epoch:
                continue
            if task in outcome.dev_examples["last"]:
                outcome.dev_examples["best"][task] = outcome.dev_examples["last"][task]
            if self.keep_predictions:
                outcome.predictions[task] = {"dev": dev_predictions[task]}
            if task in parts.test_sets:
                found = {}
                test_metrics, _ = evaluate(model, {task: parts.test_sets[task]}, model.specs,
                                           self.settings.eval_batch_size, parts.pad_id, self.device, keep=found,
                                           unlabelled=parts.unlabelled_test, ranks=self.ranks, pipeline=self.pipeline)
                outcome.test_at_best_dev[task] = {"epoch": epoch, **test_metrics[task]}
                if self.keep_predictions:
                    outcome.predictions[task]["test"] = found[task]
        model.train()

    def _train_summary(self) -> dict:
        state, settings = self.state, self.settings
        step_seconds = state.step_seconds
        seconds = sum(step_seconds)  # steps include fetching their batches, exclude evaluation
        return {
            "examples": state.examples, "steps": state.step,
            **({"extra_examples": state.extra_examples} if state.extra_streams else {}), "steps_per_epoch": self.steps_per_epoch,
            "seconds": seconds,
            "examples_per_second": state.examples / seconds if seconds else float("nan"),
            "step_seconds_median": statistics.median(step_seconds) if step_seconds else float("nan"),
            "step_timing": "cuda_events" if self.timer.cuda else "wall_clock",
            **flops.summary(state.model_flops, seconds, self.device, settings.precision),
            **self.pipeline.summary(),
            **({"resumed_from_epoch": self.resumed_from} if self.resumed_from is not None else {}),
        }


def train(parts: RunParts, settings: TrainSettings, device: torch.device, ranks: Ranks = SINGLE,
          progress: bool = False, keep_predictions: bool = False) -> TrainOutcome:
    """A whole run from the start (a TrainingLoop without checkpoints)."""
    return TrainingLoop(parts, settings, device, ranks, progress, keep_predictions).run()
