"""Per-row predictions of each task and split, from the weights of the task's best dev epoch.

Generic layout: `TASK-SPLIT.tsv` with columns `id` (the source's id column, else the row's position)
and `prediction` (the label name; the score for regression; space-separated tags for token tasks).
A source may name its own layout (`predictions = { file = "...{split}...", column = "..." }`, as the
cs224n preset does for the course's submission files: `id \\t COLUMN` then `id , value` per row).
MLM tasks have no predictions to submit and are left out.
"""

from __future__ import annotations

from pathlib import Path

from mtlbench.bench.files import inside, write_text_atomic
from mtlbench.tasks.spec import TaskKind


def _render(spec, prediction) -> str:
    if spec.kind is TaskKind.PAIR_REGRESSION:
        return f"{prediction:.4f}"
    if spec.kind.is_token_level:
        return " ".join(spec.labels[i] for i in prediction)
    return spec.labels[prediction]


def write(folder: Path, specs: dict, data: dict, predictions: dict) -> list[Path]:
    written = []
    for task, splits in predictions.items():
        spec = specs[task]
        if spec.kind is TaskKind.MLM:
            continue
        source = data[task]
        layout = spec.sources[source.source].get("predictions")
        for split, values in splits.items():
            ids = [row.get("id", str(i)) for i, row in enumerate(source.rows[split])]
            rendered = [_render(spec, v) for v in values]
            if layout:
                path = inside(folder, layout["file"].format(split=split))
                text = f"id \t {layout['column']} \n" + "".join(f"{i} , {v} \n" for i, v in zip(ids, rendered))
            else:
                path = inside(folder, f"{task}-{split}.tsv")
                text = "id\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(ids, rendered))
            write_text_atomic(path, text)
            written.append(path)
    return written
