"""Hugging Face hub datasets through `datasets`: GLUE SST-2 / QQP / STS-B and SST-5.

`load_dataset` needs the network; `--data-dir DIR` instead reads `DIR/<task>` written with
`DatasetDict.save_to_disk`, through the same column mapping, which is what the tests exercise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import UserError
from tasks.spec import TaskData


@dataclass(frozen=True)
class HubDataset:
    path: str
    name: str | None
    text_columns: tuple[str, ...]
    label_column: str
    splits: dict[str, str]  # mtlbench split -> hub split


HUB = {
    # SST-5 (fine-grained); GLUE's sst2 is binary and would not fit a 5-class head.
    "sst": HubDataset("SetFit/sst5", None, ("text",), "label", {"train": "train", "dev": "validation", "test": "test"}),
    "quora": HubDataset("nyu-mll/glue", "qqp", ("question1", "question2"), "label",
                        {"train": "train", "dev": "validation", "test": "test"}),
    "sts": HubDataset("nyu-mll/glue", "stsb", ("sentence1", "sentence2"), "label",
                      {"train": "train", "dev": "validation", "test": "test"}),
}


def rows_from_dataset_dict(task: str, dataset_dict, origin: str) -> TaskData:
    """Map a DatasetDict with the hub's column names to mtlbench rows (skips unlabelled rows)."""
    spec = HUB[task]
    data = TaskData(rows={})
    for split, hub_split in spec.splits.items():
        if hub_split not in dataset_dict:
            if split == "test":
                continue
            raise UserError(f"{origin}: split '{hub_split}' not found (has {sorted(dataset_dict)})")
        dataset = dataset_dict[hub_split]
        for column in spec.text_columns + (spec.label_column,):
            if column not in dataset.column_names:
                raise UserError(f"{origin} [{hub_split}]: missing required column '{column}'")
        names = ("text",) if len(spec.text_columns) == 1 else ("text_a", "text_b")
        rows, skipped = [], Counter()
        for example in dataset:
            label = example[spec.label_column]
            if label is None or label == -1:  # GLUE test splits carry -1
                skipped["unlabelled"] += 1
                continue
            texts = [example[c] for c in spec.text_columns]
            if not all(isinstance(t, str) and t.strip() for t in texts):
                skipped["empty sentence"] += 1
                continue
            row = dict(zip(names, texts))
            row["label"] = float(label) if task == "sts" else int(label)
            rows.append(row)
        data.rows[split] = rows
        data.skipped[split] = dict(skipped)
    return data


def load(task: str, data_dir: str | Path | None = None) -> TaskData:
    import datasets

    spec = HUB[task]
    if data_dir is not None:
        path = Path(data_dir) / task
        if not path.exists():
            raise UserError(f"{path}: not found (hf source with --data-dir expects DatasetDict.save_to_disk output)")
        return rows_from_dataset_dict(task, datasets.load_from_disk(str(path)), str(path))
    origin = f"{spec.path}" + (f" ({spec.name})" if spec.name else "")
    try:
        dataset_dict = datasets.load_dataset(spec.path, spec.name)
    except Exception as error:  # noqa: BLE001 - network, auth, hub: every failure gets the offline hint
        raise UserError(f"could not load {origin} from the Hugging Face hub ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); offline, pass --data-dir DIR "
                        f"holding DatasetDict.save_to_disk output per task") from None
    return rows_from_dataset_dict(task, dataset_dict, origin)
