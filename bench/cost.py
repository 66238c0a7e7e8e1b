"""A run's step cost relative to the suite's baseline recipe, measured so that it holds on a busy
machine: short blocks of steps of the two recipes take turns in one process on the same batches,
timed by the CPU time they consumed on CPU (bench.paired_rounds), the ratio taken within each round,
and rounds added until the median ratio's 95 % interval is within ±`target` (or the cap is met).

Whole-run throughput (examples/s over the training) is the other figure a record keeps: it is what
the run cost, but it moves with whatever else ran beside it.
"""

from __future__ import annotations

import gc
import itertools
import math
import random

import numpy as np
import torch
from mtlbench.bench.config import Recipe
from mtlbench.bench.context import SuiteContext
from mtlbench.bench.paired_rounds import Clock, PairedResult, paired_rounds
from mtlbench.bench.precision import StepPipeline
from mtlbench.bench.step import make_optimizer, training_step

METHOD = ("median over rounds of (CPU seconds on CPU, synchronised wall seconds on CUDA, per training example of "
          "the recipe / of the baseline recipe), one block of each per round in one process, the same batches, fresh "
          "models; rounds until the median's 95 % order-statistic interval is within the target")


class _Stepper:
    """One recipe's training steps on a fixed pool of batches, in the order its sampler asks for tasks."""

    def __init__(self, context: SuiteContext, recipe: Recipe, seed: int, block_batches: int, epochs: int):
        parts = context.build(recipe, seed)  # a fresh model: the trained run's state stays as it was
        model, strategies, train_sets, device = parts.model, parts.strategies, parts.train_sets, context.device
        self.model, self.strategies, self.device, self.epochs = model.to(device), strategies, device, epochs
        train = context.suite.train_for(recipe)
        self.optimizer = make_optimizer(strategies.freezing.parameter_groups(train.lr, train.weight_decay)
                                        + strategies.combiner.optimizer_groups(train.lr, device))
        # The task sets of the sampler's first steps, repeated until a block holds `block_batches`
        # task batches; each task's batches drawn once, so both recipes see the same rows.
        plan, batches = [], 0
        for tasks in itertools.cycle(list(itertools.islice(strategies.sampler.epoch(1), 4 * block_batches))):
            if batches >= block_batches:
                break
            plan.append(list(tasks))
            batches += len(tasks)
        self.plan = plan
        streams = {t: s.stream() for t, s in train_sets.items()}
        needed = {t: sum(t in tasks for tasks in plan) for t in train_sets}
        self.draws = 1 + strategies.combiner.extra_batches  # the combiner's extra batches come from the pool too
        self.pool = {t: [{k: v.to(device) for k, v in next(streams[t]).items()} for _ in range(needed[t] * self.draws)]
                     for t in train_sets if needed[t]}
        # per example the step trains on: the extra batches are the method's cost
        self.examples = sum(b["labels"].shape[0] for batches in self.pool.values() for b in batches) / self.draws
        self.step, self.repeats = 0, 1  # repeats: the plan's passes per block (`calibrate`)
        self.pipeline = StepPipeline(train.precision, device)  # the run's precision

    def block(self, round_index: int) -> float:
        """One block of steps; returns the training examples it stepped over (the clock is the
        estimator's). The freezing stage and the combiner's epoch follow the round, so a
        schedule's stages are all sampled."""
        epoch = 1 + round_index % self.epochs
        self.strategies.freezing.on_epoch_start(epoch)
        self.strategies.combiner.on_epoch_start(epoch)
        for _ in range(self.repeats):
            used = {t: 0 for t in self.pool}
            for tasks in self.plan:
                self.strategies.freezing.on_step(self.step)
                draws = [{} for _ in range(self.draws)]
                for t in tasks:
                    for draw in draws:
                        draw[t] = self.pool[t][used[t]]
                        used[t] += 1
                training_step(self.model, self.strategies, draws[0], self.optimizer, pipeline=self.pipeline,
                              extra=draws[1:])
                self.step += 1
        return self.examples * self.repeats


def _calibrate(steppers: dict[str, _Stepper], clock: Clock, seconds: float) -> int:
    """Passes over the plan per block so that the baseline's block lasts about `seconds` on the
    judged clock: a block of a few milliseconds is at the mercy of one context switch (cold caches
    after another process ran), one of a tenth of a second averages many."""
    started, _ = clock.read()
    steppers["baseline"].block(0)  # one pass: repeats is still 1
    took = clock.read()[0] - started
    repeats = max(1, math.ceil(seconds / took)) if took > 0 else 1
    for stepper in steppers.values():
        stepper.repeats = repeats
    return repeats


def paired_step_cost(context: SuiteContext, recipe: Recipe, seed: int) -> dict:
    """The recipe's step cost over the suite baseline's (see the module docstring), with the 95 %
    interval of the median ratio. The baseline recipe is paired with a second copy of itself: its
    ratio is 1 by construction and the measured one is kept as `self_ratio`, the suite's check on
    the method. Random streams and the thread count are restored afterwards."""
    settings, baseline, device = context.suite.cost, context.suite.baseline, context.device
    train = context.suite.train_for(recipe)
    python_state, numpy_state = random.getstate(), np.random.get_state()  # building a model reseeds them
    threads = torch.get_num_threads()
    torch.set_num_threads(train.threads)  # the CPU clock is the thread's only when the step runs on it
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            result, repeats = _measure(context, recipe, seed, train)
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    measured = result.summary("recipe")
    ratio, interval = measured.pop("ratio"), measured.pop("ratio_ci")
    seconds, baseline_seconds = measured.pop("seconds"), measured.pop("baseline_seconds")
    found = {"ratio": ratio, "ratio_ci": interval}
    if recipe.resolved() == baseline.resolved():
        # 1 by construction; what was measured is the method's own error, the suite's self-check
        found = {"ratio": 1.0, "ratio_ci": [1.0, 1.0], "self_ratio": ratio, "self_ratio_ci": interval}
    return {"baseline": baseline.name, **found, **measured, "seconds_per_example": seconds,
            "baseline_seconds_per_example": baseline_seconds, "block_batches": settings.block_batches,
            "block_passes": repeats, "max_rounds": settings.rounds, "method": METHOD}


def _measure(context: SuiteContext, recipe: Recipe, seed: int, train) -> tuple[PairedResult, int]:
    settings, device = context.suite.cost, context.device
    steppers = {"recipe": _Stepper(context, recipe, seed, settings.block_batches, train.epochs),
                "baseline": _Stepper(context, context.suite.baseline, seed, settings.block_batches, train.epochs)}
    for stepper in steppers.values():  # warm-up: allocator, kernels, the optimizer's state
        stepper.block(0)
    clock = Clock.for_device(device.type, train.threads,
                             (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None,
                             settings.clock)
    repeats = _calibrate(steppers, clock, settings.block_seconds)
    result = paired_rounds({name: s.block for name, s in steppers.items()}, "baseline", clock,
                           settings.min_rounds, settings.rounds, settings.target)
    del steppers
    gc.collect()
    return result, repeats
