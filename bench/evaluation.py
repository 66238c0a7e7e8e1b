"""Scoring a model on a split: per-row predictions (sharded over ranks), the kind's metrics, and the
best dev epoch of a task."""

from __future__ import annotations

import contextlib
import math
import time

import torch
from mtlbench.bench.data import eval_batches
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.parallel import SINGLE, Ranks
from mtlbench.bench.precision import StepPipeline
from mtlbench.tasks.metrics import score
from mtlbench.tasks.spec import TaskSpec
from tqdm.auto import tqdm


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
