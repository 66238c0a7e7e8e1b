"""How much the tasks' gradients conflict, measured the same way for every recipe.

Gradient combiners record the cosines of the task gradients they form at every step, but the sum
baseline (and any loss weighting) forms none, so "does PCGrad meet less conflict than plain
summing?" had no answer. The probe answers it for every multi-task recipe: after each epoch, on the
first `PROBE_BATCHES` training batches of each task (file order, so the same rows at every epoch
and for every recipe), each task's gradient of the shared trainable parameters is taken and the
pairwise cosines recorded in the epoch's history entry.

It does not change the run: eval mode (no dropout, so no random numbers are drawn), `autograd.grad`
(nothing left in `.grad`), float32 whatever the run's precision (a cosine does not need the speed,
and fp16 gradients of unscaled losses underflow), MLM masks from a generator of its own, and outside
the timed steps, so the cost column is not touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plots read `summarise` without importing torch
    import torch
    from mtlbench.bench.data import TaskBatches
    from mtlbench.bench.model import MultiTaskModel

PROBE_BATCHES = 4  # per task and epoch: 4 x T backwards, against the epoch's hundreds of steps
PROBE_MASK_SEED = 20_000_000  # the probe's MLM masks: fixed, apart from every run's own seeds


def probe_batches(train_sets: Mapping[str, TaskBatches], batches: int = PROBE_BATCHES) -> list[dict[str, dict]]:
    """`batches` draws of one batch per task, from the first rows in file order (fewer when a
    task's split is short: a draw then holds the tasks that still have rows)."""
    from mtlbench.bench.data import collate

    draws: list[dict[str, dict]] = [{} for _ in range(batches)]
    for task, source in train_sets.items():
        masker = source.masker.with_seed(PROBE_MASK_SEED) if source.masker is not None else None
        for draw in range(batches):
            rows = source.rows[draw * source.batch_size:(draw + 1) * source.batch_size]
            if not rows:
                break
            batch = collate(rows, source.spec, source.pad_id)
            if masker is not None:
                batch["input_ids"], batch["labels"] = masker(batch["input_ids"], batch["attention_mask"])
            draws[draw][task] = batch
    return [draw for draw in draws if len(draw) > 1]


def gradient_cosines(model: MultiTaskModel, draws: list[dict[str, dict]], device: torch.device
                     ) -> dict[str, list[float]]:
    """Per task pair ("a|b", the combiners' naming), the cosine of the two tasks' gradients of the
    shared trainable parameters on each draw. Empty when nothing shared trains (a frozen encoder)."""
    import torch
    from mtlbench.strategies.gradients import cosines, gramian64, pair_names

    shared = model.shared_parameters()
    if not shared or not draws:
        return {}
    tasks = list(model.specs)
    found: dict[str, list[float]] = {pair: [] for pair in pair_names(tasks)}
    was_training = model.training
    model.eval()
    try:
        for draw in draws:
            rows = []
            for task, batch in draw.items():
                loss = model(task, {k: v.to(device) for k, v in batch.items()}).loss
                grads = torch.autograd.grad(loss, shared, allow_unused=True)
                rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                       for g, p in zip(grads, shared)]))
            cos = cosines(gramian64(torch.stack(rows))).tolist()
            present = list(draw)
            for i, a in enumerate(present):
                for j in range(i + 1, len(present)):
                    b = present[j]
                    found[f"{a}|{b}" if f"{a}|{b}" in found else f"{b}|{a}"].append(round(cos[i][j], 6))
    finally:
        model.train(was_training)
    return {pair: values for pair, values in found.items() if values}


def summarise(history: list[dict]) -> dict[str, dict[str, float]]:
    """Per pair, over every epoch's probe of a run: the mean cosine, the fraction of negative ones
    and how many there were."""
    values: dict[str, list[float]] = {}
    for entry in history:
        for pair, found in (entry.get("gradient_cosines") or {}).items():
            values.setdefault(pair, []).extend(found)
    return {pair: {"mean_cosine": sum(v) / len(v), "negative_cosine_fraction": sum(c < 0 for c in v) / len(v),
                   "probes": len(v)} for pair, v in values.items() if v}
