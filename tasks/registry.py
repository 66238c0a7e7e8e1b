"""Task definitions in TOML, and the registry of the built-in ones (`tasks/definitions/*.toml`).

A definition (a file, or a `[tasks.NAME]` table of a suite):

    kind = "single_classification"     # see `mtlbench list` for the kinds
    description = "..."
    metric = "accuracy"                # primary metric; default: the kind's first
    labels = ["neg", "pos"]            # or "label2ind.json" (name -> index), or absent: inferred from train
    label_range = [0, 5]               # pair_regression only
    max_train = 1000                   # optional per-split row limits (max_dev, max_test)
    from = "sst"                       # optional: start from another definition, override keys

    [sources.files]                    # one table per data source the task can be read from
    train = "train.tsv"
    dev = "dev.tsv"
    columns = { text = "content", label = "label" }

The source used is the one named by the suite's `data` (or `--data`); a task with a single source
uses it whatever `data` says. Relative paths resolve against the suite's `data_dir` when it has
one, else against the folder of the file that declared the task.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from mtlbench.tasks import files
from mtlbench.tasks.errors import UserError, check_keys, nearest
from mtlbench.tasks.metrics import lower_is_better
from mtlbench.tasks.names import check_file_pattern, check_task_name
from mtlbench.tasks.source_types import SOURCES
from mtlbench.tasks.spec import KINDS, TaskKind, TaskSpec

DEFINITION_KEYS = ("name", "kind", "description", "metric", "labels", "label_range", "max_train", "max_dev",
                   "max_test", "sources", "source", "from")
COLUMN_FIELDS = ("id", "text", "text_a", "text_b", "label", "tokens", "tags")


def definitions_dir() -> Path:
    return Path(str(resources.files("mtlbench.tasks") / "definitions"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in definitions_dir().glob("*.toml"))


def read_toml(path: Path) -> dict:
    """A TOML file a user wrote (a suite, a task definition), or one line saying what is wrong."""
    try:
        return tomllib.loads(files.decode(path))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: {error}") from None
    except RecursionError:
        raise UserError(f"{path}: arrays or tables nested too deeply to read") from None


def find(reference: str, base: Path | None = None, _seen: tuple = ()) -> TaskSpec:
    """A task by registry name, or by the path of a `.toml` definition (relative to `base`)."""
    if reference.endswith(".toml"):
        path = Path(reference) if base is None or Path(reference).is_absolute() else base / reference
        return parse(read_toml(path), path.stem, str(path), path.parent, _seen)
    names = builtin_names()
    if reference not in names:
        raise UserError(f"unknown task '{reference}'{nearest(reference, names)}; tasks: {', '.join(names)} "
                        "(or a path to a task .toml, or a [tasks.NAME] table in the suite)")
    path = definitions_dir() / f"{reference}.toml"
    return parse(read_toml(path), reference, str(path), path.parent, _seen)


def builtin() -> dict[str, TaskSpec]:
    return {name: find(name) for name in builtin_names()}


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _sources(table: dict, where: str, folder: Path) -> dict[str, dict]:
    if "source" in table and "sources" in table:
        raise UserError(f"{where}: give either 'source' (one) or 'sources' (named alternatives), not both")
    if "source" in table:
        single = table["source"]
        if not isinstance(single, dict) or not isinstance(single.get("type"), str):
            raise UserError(f"{where}.source: expected a table with 'type' ({', '.join(SOURCES)})")
        raw = {single["type"]: {k: v for k, v in single.items() if k != "type"}}
    else:
        raw = table.get("sources")
        if not isinstance(raw, dict) or not raw:
            raise UserError(f"{where}: no data source; add a [sources.TYPE] table ({', '.join(SOURCES)})")
    sources = {}
    for name, options in raw.items():
        if not isinstance(options, dict):
            raise UserError(f"{where}.sources.{name}: expected a table, got {options!r}")
        source_type = options.get("type", name)
        if source_type not in SOURCES:
            raise UserError(f"{where}.sources.{name}: unknown source type '{source_type}'"
                            f"{nearest(source_type, SOURCES)}; types: {', '.join(SOURCES)}")
        check_keys({k: v for k, v in options.items() if k not in ("type", "base")}, SOURCES[source_type].keys,
                    f"{where}.sources.{name}")
        columns = options.get("columns", {})
        check_keys(columns, COLUMN_FIELDS, f"{where}.sources.{name}.columns")
        for column, value in columns.items():
            if not isinstance(value, str):
                raise UserError(f"{where}.sources.{name}.columns.{column}: expected a column name, got {value!r}")
        if "predictions" in options:
            _predictions_layout(options["predictions"], f"{where}.sources.{name}.predictions")
        # The folder the definition came from: relative paths resolve against it.
        # (a definition taken over with `from` keeps the folder of the file it came from)
        sources[name] = {"base": str(folder), **options, "type": source_type}
    return sources


def _predictions_layout(layout, where: str) -> None:
    """A source's own predictions files: `{ file = "NAME-{split}.csv", column = "HEADER" }`, checked
    when the task is read, so that a bad one never fails after training."""
    check_keys(layout, ("file", "column"), where)
    if "file" not in layout or "column" not in layout:
        raise UserError(f"{where}: needs file (a file name with {{split}}) and column (the prediction's header)")
    check_file_pattern(layout["file"], f"{where}.file")
    if not isinstance(layout["column"], str) or not layout["column"].strip() or "\n" in layout["column"]:
        raise UserError(f"{where}.column: expected a column header, got {layout['column']!r}")


def parse(table: dict, default_name: str, origin: str, folder: Path, _seen: tuple = ()) -> TaskSpec:
    """Validate one definition table; every error names `origin` and the key."""
    where = origin
    check_keys(table, DEFINITION_KEYS, where)
    if "from" in table:
        base_ref = table["from"]
        if not isinstance(base_ref, str):
            raise UserError(f"{where}.from: expected a task name or .toml path, got {base_ref!r}")
        if base_ref in _seen:
            raise UserError(f"{where}.from: '{base_ref}' refers back to itself")
        base = find(base_ref, folder, _seen + (base_ref,))
        merged = {**_as_table(base), **{k: v for k, v in table.items() if k != "from"}}
        if "sources" in table or "source" in table:
            merged.pop("sources" if "source" in table else "source", None)
        else:
            merged["sources"] = base.sources
        table = merged
    name = table.get("name", default_name)
    check_task_name(name, f"{where}.name")
    kind_name = table.get("kind")
    kinds = [k.value for k in TaskKind]
    if kind_name not in kinds:
        raise UserError(f"{where}.kind: " + (f"unknown kind '{kind_name}'{nearest(str(kind_name), kinds)}"
                                              if kind_name is not None else "missing") + f"; kinds: {', '.join(kinds)}")
    kind = TaskKind(kind_name)
    info = KINDS[kind]
    metric = table.get("metric", info.metrics[0])
    if metric not in info.metrics:
        raise UserError(f"{where}.metric: '{metric}' is not a metric of kind '{kind.value}' "
                        f"({', '.join(info.metrics)})")
    if lower_is_better(metric):
        better = [m for m in info.metrics if not lower_is_better(m)]
        raise UserError(f"{where}.metric: {metric} is lower-is-better; the primary metric must be "
                        f"higher-is-better (use '{better[0]}')")
    labels, label_origin = _labels(table.get("labels"), info.labels, where, folder)
    label_range = table.get("label_range")
    if info.labels == "range":
        if (not isinstance(label_range, list) or len(label_range) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in label_range)
                or label_range[0] >= label_range[1]):
            raise UserError(f"{where}.label_range: kind '{kind.value}' needs [low, high] with low < high, "
                            f"got {label_range!r}")
        label_range = (float(label_range[0]), float(label_range[1]))
    elif label_range is not None:
        raise UserError(f"{where}.label_range: only for kind pair_regression")
    if info.labels in ("range", "none") and table.get("labels") is not None:
        raise UserError(f"{where}.labels: kind '{kind.value}' has no label set")
    if kind is TaskKind.TOKEN_IOB and labels is not None:
        check_iob(labels, f"{where}.labels")
    if kind is TaskKind.TOKEN_BINARY and labels is not None and len(labels) != 2:
        raise UserError(f"{where}.labels: kind token_binary needs exactly two labels (negative first), got {labels}")
    limits = {split: _positive_int(table[f"max_{split}"], f"{where}.max_{split}")
              for split in ("train", "dev", "test") if f"max_{split}" in table}
    description = table.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where}.description: expected a string")
    return TaskSpec(name=name, kind=kind, primary_metric=metric, description=description, labels=labels,
                    label_origin=label_origin, label_range=label_range, sources=_sources(table, where, folder),
                    limits=limits, origin=origin)


def _as_table(spec: TaskSpec) -> dict:
    table = {"kind": spec.kind.value, "description": spec.description, "metric": spec.primary_metric}
    if spec.label_origin == "declared" and spec.labels is not None:
        table["labels"] = list(spec.labels)
    elif spec.label_origin.endswith(".json"):
        table["labels"] = spec.label_origin
    if spec.label_range:
        table["label_range"] = list(spec.label_range)
    table.update({f"max_{split}": n for split, n in spec.limits.items()})
    return table


def check_iob(labels, where: str) -> None:
    for label in labels:
        if label != "O" and not (label[:2] in ("B-", "I-") and len(label) > 2):
            raise UserError(f"{where}: '{label}' is not an IOB tag (O, B-TYPE or I-TYPE)")


def _labels(value: Any, scheme: str, where: str, folder: Path) -> tuple[tuple[str, ...] | None, str]:
    if value is None:
        return None, "inferred"
    if scheme in ("range", "none"):
        return None, "declared"  # refused by the caller with the kind's name
    if isinstance(value, list):
        if len(value) < 2 or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where}.labels: expected at least two label names (strings or integers), got {value!r}")
        # Labels are compared without surrounding spaces, in the definition as in the data.
        names = tuple(str(v).strip() for v in value)
        if not all(names):
            raise UserError(f"{where}.labels: an empty label in {value!r}")
        if len(set(names)) != len(names):
            raise UserError(f"{where}.labels: repeated label in {value!r} (labels are compared without "
                            "surrounding spaces)")
        return names, "declared"
    if isinstance(value, str) and value.endswith(".json"):
        return None, value  # read when the data is loaded: it may live under the suite's data_dir
    raise UserError(f"{where}.labels: expected a list of labels or a label->index .json file, got {value!r}")


def read_label_map(path: Path) -> tuple[str, ...]:
    """Label names in index order from a `{"label": index}` JSON file (seed 001's label2ind.json)."""
    import json

    try:
        mapping = json.loads(files.decode(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(mapping, dict) or len(mapping) < 2:
        raise UserError(f"{path}: expected an object of at least two \"label\": index entries")
    indices = list(mapping.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices) \
            or sorted(indices) != list(range(len(indices))):
        raise UserError(f"{path}: indices must be the integers 0..{len(indices) - 1}, each once; got {indices}")
    names = tuple(name.strip() for name, _ in sorted(mapping.items(), key=lambda item: item[1]))
    if len(set(names)) != len(names) or not all(names):
        raise UserError(f"{path}: labels must be distinct and not empty (compared without surrounding spaces)")
    return names
