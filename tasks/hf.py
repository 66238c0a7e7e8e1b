"""Hugging Face datasets: from the hub (`load_dataset`, needs the network) or from a folder written
with `DatasetDict.save_to_disk` (`disk = "folder"`, or `--data-dir DIR` holding `DIR/<task>`).

Label names come from the dataset's `ClassLabel` features when the task does not declare them:
a `label` column of ClassLabel, or a tag column of `Sequence(ClassLabel)` as in CoNLL-2003
(`tokens` + `ner_tags`). Rows labelled -1 (GLUE's hidden test labels) are skipped as unlabelled.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from mtlbench.tasks.errors import UserError
from mtlbench.tasks.reading import RawSplit

DEFAULT_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DEFAULT_COLUMNS = {"tags": "ner_tags"}  # CoNLL-2003's layout


def _class_names(feature) -> tuple[str, ...] | None:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
    if isinstance(inner, datasets.ClassLabel):
        return tuple(inner.names)
    return None


def _hub_reachable(timeout: float = 5.0) -> bool:
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - no name service, no route, a proxy refusing: all mean "not reachable"
        return False
    return True


@contextlib.contextmanager
def _offline_unless_reachable():
    """Without a way to the hub, `load_dataset` retries every request with back-off (25 s and a
    dozen log lines before its error). One quick probe decides: if the hub cannot be reached, the
    load runs in the libraries' offline mode, from the local cache or failing at once."""
    if _hub_reachable():
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def open_dataset(spec, options: dict, context):
    """(DatasetDict, the place it came from, for messages)."""
    import datasets

    if "disk" in options or context.data_dir is not None:
        path = context.path(options["disk"], options) if "disk" in options else context.data_dir / spec.name
        if not path.exists():
            raise UserError(f"{path}: not found (the hf source reads DatasetDict.save_to_disk output here)")
        try:
            return datasets.load_from_disk(str(path)), str(path)
        except Exception as error:  # noqa: BLE001 - a missing or broken state.json, dataset_info.json, arrow file
            text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise UserError(f"{path}: not a readable saved dataset ({text})") from None
    if "path" not in options:
        raise UserError(f"{spec.origin}.sources.hf: needs 'path' (a hub dataset) or 'disk' (a saved folder)")
    origin = options["path"] + (f" ({options['name']})" if options.get("name") else "")
    try:
        with _offline_unless_reachable():
            dataset_dict = datasets.load_dataset(options["path"], options.get("name"))
    except Exception as error:  # noqa: BLE001 - network, auth, hub: every failure gets the offline hint
        raise UserError(f"could not load {origin} from the Hugging Face hub ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); offline, pass --data-dir DIR "
                        f"holding DatasetDict.save_to_disk output per task") from None
    return dataset_dict, origin


def read(spec, options: dict, context):
    dataset_dict, origin = open_dataset(spec, options, context)
    columns = {name: options.get("columns", {}).get(name, DEFAULT_COLUMNS.get(name, name))
               for name in ("id",) + spec.kind.info.fields}
    label_field = "tags" if "tags" in columns else "label"
    splits = {**DEFAULT_SPLITS, **options.get("splits", {})}
    raw, names = {}, None
    for split, hub_split in splits.items():
        if hub_split not in dataset_dict:
            if split == "test":
                continue
            raise UserError(f"{origin}: split '{hub_split}' not found (has {sorted(dataset_dict)}); "
                            f"map it with splits = {{ {split} = \"...\" }}")
        dataset = dataset_dict[hub_split]
        for name in spec.kind.info.fields:
            if columns[name] not in dataset.column_names:
                raise UserError(f"{origin} [{hub_split}]: missing column '{columns[name]}' (columns.{name}); "
                                f"has {dataset.column_names}")
        label_column = columns.get(label_field)
        split_names = _class_names(dataset.features[label_column]) if label_column in dataset.features else None
        names = names or split_names
        found = RawSplit(skipped=Counter())
        present = {name: column for name, column in columns.items() if column in dataset.column_names}
        for i, example in enumerate(dataset):
            fields = {name: example[column] for name, column in present.items()}
            label = fields.get(label_field)
            if label_field in fields and (label is None or label == -1):
                found.skipped["unlabelled"] += 1
                continue
            if split_names is not None and label_field in fields:  # ClassLabel ids -> names
                fields[label_field] = ([split_names[t] for t in label] if isinstance(label, list)
                                       else split_names[label])
            found.examples.append((f"{origin} [{hub_split}] row {i}", fields))
        raw[split] = found
    return raw, names
