"""The validation split `mtlbench tune` scores trials on: a share of each task's *training* rows,
held out (never dev, never test - tuning on either would leak into the comparison made on them).
Seeded; stratified by label for classification, so a rare class is held out in proportion."""

from __future__ import annotations

import random
from collections import defaultdict

from mtlbench.tasks.spec import TaskData, TaskKind, TaskSpec

STRATIFIED = (TaskKind.SINGLE_CLASSIFICATION, TaskKind.PAIR_CLASSIFICATION)


def carve(rows: list[dict], spec: TaskSpec, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(indices kept for training, indices held out), each sorted; about `fraction` of the rows
    held out, of every label for classification, at least one row on each side."""
    if len(rows) < 2:
        raise ValueError(f"task '{spec.name}': {len(rows)} training row(s); tuning holds some out, so it needs two")
    rng = random.Random(f"{seed}/{spec.name}/holdout")
    strata = defaultdict(list)
    for i, row in enumerate(rows):
        strata[row["label"] if spec.kind in STRATIFIED else None].append(i)
    held = []
    for key in sorted(strata, key=str):
        members = strata[key]
        rng.shuffle(members)
        held += members[:round(fraction * len(members))]
    if not held:
        held = [rng.randrange(len(rows))]
    if len(held) == len(rows):
        held = held[:-1]
    chosen = set(held)
    return [i for i in range(len(rows)) if i not in chosen], sorted(held)


def carved(data: TaskData, spec: TaskSpec, fraction: float, seed: int) -> tuple[TaskData, dict[str, list[int]]]:
    """The task's data with dev replaced by rows held out of train (and no test), and which train
    rows went where: {"train": [...], "dev": [...]} as indices into the original train split."""
    train = data.rows["train"]
    kept, held = carve(train, spec, fraction, seed)
    rows = {"train": [train[i] for i in kept], "dev": [train[i] for i in held]}
    skipped = {"train": data.skipped.get("train", {}), "dev": {}}
    return TaskData(rows, skipped, data.labels, data.label_origin, data.source), {"train": kept, "dev": held}
