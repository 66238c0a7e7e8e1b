"""The one table of data-source types: each type's reader, the keys its `[sources.TYPE]` table
takes, and a line for `mtlbench list`, the CLI's help and docs/tasks.md. A new source is a reader
module (`read(spec, options, context) -> ({split: RawSplit}, label names or None)`) and a row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtlbench.tasks import files, hf, synthetic


@dataclass(frozen=True)
class SourceType:
    read: Callable
    keys: tuple[str, ...]  # the keys its table takes (besides `type`)
    summary: str


SOURCES: dict[str, SourceType] = {
    "synthetic": SourceType(synthetic.read, ("generator", *synthetic.DIALS),
                            "the embedded generator; offline, the default"),
    "files": SourceType(files.read, ("train", "dev", "test", "format", "columns", "quoting", "on_bad_row"),
                        "CSV, TSV or JSON-lines files with a column mapping"),
    "cs224n": SourceType(files.read_cs224n, ("file", "columns", "predictions"),
                         "the CS224N minBERT files in --data-dir"),
    "hf": SourceType(hf.read, ("path", "name", "disk", "splits", "columns", "on_bad_row"),
                     "a Hugging Face dataset: the hub, or save_to_disk folders"),
}
NAMES = tuple(SOURCES)
