"""A run's step cost relative to the suite's baseline recipe, measured so that it holds on a busy
machine: short blocks of steps of the two recipes take turns in one process on the same batches,
and the ratio is taken within each round, where the machine's load hit both blocks alike.

Whole-run throughput (examples/s over the training) is the other figure a record keeps: it is what
the run cost, but it moves with whatever else ran beside it.
"""

from __future__ import annotations

import gc
import itertools
import random
import statistics
import time

import numpy as np
import torch
from mtlbench.bench.config import Recipe
from mtlbench.bench.context import SuiteContext
from mtlbench.bench.precision import StepPipeline
from mtlbench.bench.step import make_optimizer, training_step

METHOD = ("median over rounds of (seconds per training example of the recipe / of the baseline recipe), "
          "one block of each per round in one process, the same batches, fresh models")


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
        self.step = 0
        self.pipeline = StepPipeline(train.precision, device)  # the run's precision

    def block(self, round_index: int) -> float:
        """Seconds per training example over one block; the freezing stage and the combiner's
        epoch follow the round, so a schedule's stages are all sampled."""
        epoch = 1 + round_index % self.epochs
        self.strategies.freezing.on_epoch_start(epoch)
        self.strategies.combiner.on_epoch_start(epoch)
        used = {t: 0 for t in self.pool}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - started) / self.examples


def paired_step_cost(context: SuiteContext, recipe: Recipe, seed: int) -> dict:
    """The recipe's step cost over the suite baseline's (see the module docstring); the spread is
    the interquartile range of the per-round ratios. Random streams are restored afterwards."""
    settings, baseline = context.suite.cost, context.suite.baseline
    epochs = context.suite.train_for(recipe).epochs
    python_state, numpy_state = random.getstate(), np.random.get_state()  # building a model reseeds them
    with torch.random.fork_rng(devices=[context.device] if context.device.type == "cuda" else []):
        steppers = {"recipe": _Stepper(context, recipe, seed, settings.block_batches, epochs),
                    "baseline": _Stepper(context, baseline, seed, settings.block_batches, epochs)}
        for stepper in steppers.values():  # warm-up: allocator, kernels, the optimizer's state
            stepper.block(0)
        seconds = {name: [] for name in steppers}
        for r in range(settings.rounds):
            order = list(steppers) if r % 2 == 0 else list(reversed(steppers))  # neither always goes first
            for name in order:
                seconds[name].append(steppers[name].block(r))
        del steppers
        gc.collect()
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    ratios = [mine / theirs for mine, theirs in zip(seconds["recipe"], seconds["baseline"])]
    low, high = (statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else (ratios[0], ratios[0]))
    measured = {"ratio": statistics.median(ratios), "ratio_iqr": [low, high]}
    if recipe.resolved() == baseline.resolved():
        # The baseline against itself: 1 by definition; what was measured is the method's noise.
        measured = {"ratio": 1.0, "ratio_iqr": [1.0, 1.0], "self_ratio": measured["ratio"],
                    "self_ratio_iqr": measured["ratio_iqr"]}
    return {"baseline": baseline.name, **measured,
            "ratios": ratios, "seconds_per_example": statistics.median(seconds["recipe"]),
            "baseline_seconds_per_example": statistics.median(seconds["baseline"]),
            "rounds": settings.rounds, "block_batches": settings.block_batches, "method": METHOD}
