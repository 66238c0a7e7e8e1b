"""The CS224N minBERT data files (SST-5, Quora, STS-B subsets).

Tab-separated with a header row whose first column is an unnamed index. Fields may be wrapped in
double or tripled double quotes. The published files hold a few unparsable labels: those rows are
skipped and counted per reason, never silently.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from tasks.errors import UserError
from tasks.spec import TaskData

FILE_SPLITS = {"train": "train", "dev": "dev", "test": "test-student"}
FILES = {
    "sst": ("ids-sst-{split}.csv", ("sentence",), "sentiment"),
    "quora": ("quora-{split}.csv", ("sentence1", "sentence2"), "is_duplicate"),
    "sts": ("sts-{split}.csv", ("sentence1", "sentence2"), "similarity"),
}


def _unquote(field: str) -> str:
    field = field.strip()
    for quote in ('"""', '"'):
        if len(field) >= 2 * len(quote) and field.startswith(quote) and field.endswith(quote):
            return field[len(quote):-len(quote)].strip()
    return field


class BadLabel(ValueError):
    """A label the row is skipped for; the message is the reason counted."""


def _parse_label(task: str, raw: str):
    try:
        value = float(raw)
    except ValueError:
        raise BadLabel("not a number") from None
    if task == "sst":
        if value != int(value) or not 0 <= value <= 4:
            raise BadLabel("not an integer in 0..4")
        return int(value)
    if task == "quora":
        if value not in (0.0, 1.0):
            raise BadLabel("not 0 or 1")
        return int(value)
    if not 0.0 <= value <= 5.0:
        raise BadLabel("outside 0..5")
    return value


def read_file(path: Path, task: str, labelled: bool) -> tuple[list[dict], Counter]:
    _, text_columns, label_column = FILES[task]
    required = ("id",) + text_columns + ((label_column,) if labelled else ())
    rows, skipped = [], Counter()
    with open(path, newline="", encoding="utf-8") as handle:
        # QUOTE_NONE: the files' quoting is inconsistent (tripled quotes), so fields are unquoted by hand.
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: empty file, expected a header row")
        header = [_unquote(h) for h in header]
        for column in required:
            if column not in header:
                raise UserError(f"{path}: missing required column '{column}' (header: {header})")
        index = {name: header.index(name) for name in required}
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) < len(header):
                skipped["too few fields"] += 1
                continue
            texts = [_unquote(fields[index[c]]) for c in text_columns]
            if not all(texts):
                skipped["empty sentence"] += 1
                continue
            row = {"id": _unquote(fields[index["id"]])}
            row.update(zip(("text",) if task == "sst" else ("text_a", "text_b"), texts))
            if labelled:
                try:
                    row["label"] = _parse_label(task, _unquote(fields[index[label_column]]))
                except BadLabel as reason:
                    skipped[f"{label_column} {reason}"] += 1
                    continue
            rows.append(row)
    return rows, skipped


def load(task: str, data_dir: str | Path) -> TaskData:
    data_dir = Path(data_dir)
    pattern = FILES[task][0]
    data = TaskData(rows={})
    for split, file_split in FILE_SPLITS.items():
        path = data_dir / pattern.format(split=file_split)
        if not path.exists():
            if split == "test":
                continue  # the unlabelled test file is optional: only dev is scored
            raise UserError(f"{path}: file not found (cs224n source needs {pattern.format(split=file_split)})")
        rows, skipped = read_file(path, task, labelled=split != "test")
        data.rows[split] = rows
        data.skipped[split] = dict(skipped)
    return data
