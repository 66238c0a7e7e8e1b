"""Data sources behind one interface.

A reader (one per source type, tasks/source_types.py) turns its source into raw examples per
split: `(where, fields)` with the row fields of the task's kind under mtlbench's names and labels as
the source wrote them. `load_task` then maps labels to indices against the task's label set,
checks every row (an error names the file and line, or the row is skipped and counted, as the
source says), applies the per-split limits, and returns `TaskData`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from mtlbench.tasks import registry, synthetic
from mtlbench.tasks.errors import UserError, nearest
from mtlbench.tasks.reading import RawSplit, ReadContext
from mtlbench.tasks.source_types import SOURCES
from mtlbench.tasks.spec import SPLITS, TaskData, TaskKind, TaskSpec


def resolve(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else registry.find(task)


def choose_source(spec: TaskSpec, data: str | None) -> str:
    """The task's source named `data`; a task with one source uses it whatever `data` says."""
    if data in spec.sources:
        return data
    if len(spec.sources) == 1:
        return next(iter(spec.sources))
    raise UserError(f"task '{spec.name}' ({spec.origin}) has no source '{data}'{nearest(str(data), spec.sources)}; "
                    f"its sources: {', '.join(spec.sources)}")


def load_task(data: str | None, task: str | TaskSpec, data_dir=None, synthetic_config=None) -> TaskData:
    """Every split of `task` from its source `data`, labels as indices, limits applied."""
    spec = resolve(task)
    name = choose_source(spec, data)
    options = spec.sources[name]
    context = ReadContext(Path(data_dir) if data_dir is not None else None,
                          synthetic_config or synthetic.SyntheticConfig())
    raw, source_labels = SOURCES[options["type"]].read(spec, options, context)
    labels, origin = _label_set(spec, options, context, raw, source_labels)
    result = TaskData(rows={}, labels=labels, label_origin=origin, source=name)
    to_row = _row_maker(spec, labels)
    for split in SPLITS:
        if split not in raw:
            continue
        found = raw[split]
        rows, skipped = [], Counter(found.skipped)
        skip = found.skip_bad if found.skip_bad is not None else options.get("on_bad_row") == "skip"
        for where, fields in found.examples:
            try:
                rows.extend(to_row(fields, found.labelled))
            except BadRow as bad:
                if not skip and not bad.always_skipped:
                    raise UserError(f"{where}: {bad}") from None
                skipped[bad.reason] += 1
        if split in ("train", "dev") and not rows:
            place = context.path(options[split], options) if isinstance(options.get(split), str) else spec.origin
            raise UserError(f"{place}: task '{spec.name}': the {split} split from source '{name}' has no rows"
                            + (f" (skipped: {dict(skipped)})" if skipped else ""))
        limit = spec.limits.get(split)
        if limit is not None and len(rows) > limit:
            # A fixed sample, in file order: the first rows of a sorted file would not be representative.
            keep = sorted(random.Random(f"{spec.name}/{split}").sample(range(len(rows)), limit))
            skipped[f"over max_{split}"] += len(rows) - limit
            rows = [rows[i] for i in keep]
        result.rows[split] = rows
        result.skipped[split] = dict(skipped)
    return result


class BadRow(ValueError):
    """A row the source's `on_bad_row` decides about: the message says what is wrong in this row,
    `reason` is the category skipped rows are counted under. An `always_skipped` row (an empty
    text: nothing to learn from) is skipped and counted whatever `on_bad_row` says (docs/tasks.md)."""

    def __init__(self, message: str, reason: str, always_skipped: bool = False):
        super().__init__(message)
        self.reason, self.always_skipped = reason, always_skipped


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label_index(labels: tuple[str, ...]):
    """raw label -> index: by name, or by value where both are numbers ('3.0' is label '3')."""
    by_name = {name: i for i, name in enumerate(labels)}
    by_number = {}
    for i, name in enumerate(labels):
        number = _number(name)
        if number is not None:
            by_number.setdefault(number, i)

    def index(raw) -> int:
        key = str(raw).strip()  # as the declared labels are (tasks.registry)
        if key in by_name:
            return by_name[key]
        number = _number(key)
        if number is not None and number in by_number:
            return by_number[number]
        shown = ", ".join(repr(label) for label in labels[:8]) + (", ..." if len(labels) > 8 else "")
        raise BadRow(f"label {raw!r} is not one of the task's labels ({shown})", "label not in the label set")
    return index


def _sort_key(kind: TaskKind):
    def key(name: str):
        if kind is TaskKind.TOKEN_IOB:  # O first, then by entity type, B before I
            return (0, "", "") if name == "O" else (1, name[2:], name[:1])
        number = _number(name)
        return (0, number, "") if number is not None else (1, 0.0, name)
    return key


def _label_set(spec: TaskSpec, options: dict, context: ReadContext, raw: dict[str, RawSplit],
               source_labels: tuple[str, ...] | None) -> tuple[tuple[str, ...] | None, str]:
    scheme = spec.kind.info.labels
    if scheme in ("range", "none"):
        return None, "none"
    if spec.labels is not None:
        return spec.labels, spec.label_origin
    if spec.label_origin.endswith(".json"):
        labels = registry.read_label_map(context.path(spec.label_origin, options))
        origin = spec.label_origin
    elif source_labels is not None:
        labels, origin = source_labels, "the dataset's features"
    else:
        field_name = "tags" if scheme == "tags" else "label"
        seen = set()
        for _, fields in raw.get("train", RawSplit()).examples:
            values = fields.get(field_name)
            if values is None:
                continue
            if scheme == "tags" and isinstance(values, str):  # a CSV/TSV cell: space-separated tags
                values = values.split()
            for value in (values if scheme == "tags" else [values]):
                seen.add(str(value).strip())
        if len(seen) < 2:
            raise UserError(f"task '{spec.name}': cannot infer the labels from the training split "
                            f"(found {sorted(seen)}); declare them with labels = [...]")
        labels, origin = tuple(sorted(seen, key=_sort_key(spec.kind))), "inferred from the training split"
    if spec.kind is TaskKind.TOKEN_IOB:
        registry.check_iob(labels, f"task '{spec.name}' labels ({origin})")
    if spec.kind is TaskKind.TOKEN_BINARY and len(labels) != 2:
        raise UserError(f"task '{spec.name}': kind token_binary needs two labels, found {list(labels)} ({origin})")
    return labels, origin


def _row_maker(spec: TaskSpec, labels: tuple[str, ...] | None):
    """fields -> rows of the kind (MLM: one row per text), raising BadRow for a row that cannot be used."""
    kind, scheme = spec.kind, spec.kind.info.labels
    index = _label_index(labels) if labels else None

    def text(fields: dict, name: str) -> str:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            if isinstance(value, str) or value is None:
                raise BadRow(f"{name}: empty text", "empty text", always_skipped=True)
            raise BadRow(f"{name}: expected text, got {value!r}", "text not a string")
        return value.strip()

    def make(fields: dict, labelled: bool) -> list[dict]:
        row = {"id": fields["id"]} if fields.get("id") not in (None, "") else {}
        if kind is TaskKind.MLM:
            keys = [k for k in ("text", "text_a", "text_b") if k in fields] or ["text"]
            return [{**row, "text": text(fields, k)} for k in keys]
        if kind.is_token_level:
            tokens = fields.get("tokens")
            if isinstance(tokens, str):
                tokens = tokens.split()
            if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
                raise BadRow("tokens: expected a non-empty list of words", "no tokens")
            row["tokens"] = tokens
            if labelled:
                tags = fields.get("tags")
                if isinstance(tags, str):
                    tags = tags.split()
                if not isinstance(tags, list) or len(tags) != len(tokens):
                    raise BadRow(f"{len(tokens)} tokens but {len(tags) if isinstance(tags, list) else 'no'} tags",
                                 "tokens and tags differ in length")
                row["tags"] = [index(t) for t in tags]
            return [row]
        for name in kind.info.fields[:-1]:
            row[name] = text(fields, name)
        if labelled:
            raw_label = fields.get("label")
            if scheme == "range":
                value = _number(raw_label)
                if value is None:
                    raise BadRow(f"label '{raw_label}' is not a number", "label not a number")
                low, high = spec.label_range
                if not low <= value <= high:
                    raise BadRow(f"label {value} outside {low:g}..{high:g}", f"label outside {low:g}..{high:g}")
                row["label"] = value
            else:
                row["label"] = index(raw_label)
        return [row]
    return make
