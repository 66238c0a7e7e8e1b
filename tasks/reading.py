"""The interface of a data source's reader: what it is given (`ReadContext`) and what it gives back
(`RawSplit` per split). Readers (tasks/synthetic.py, files.py, hf.py) import it; the table of
sources is tasks/source_types.py, and tasks/sources.py turns raw examples into rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RawSplit:
    """What a reader found in one split."""

    examples: list[tuple[str, dict]] = field(default_factory=list)  # (where, fields)
    skipped: Counter = field(default_factory=Counter)
    labelled: bool = True
    skip_bad: bool | None = None  # a preset's rule for bad rows; None: the source's on_bad_row


@dataclass
class ReadContext:
    """What a reader needs besides the task's source table: the suite's data folder and the
    synthetic generator's settings (a tasks.synthetic.SyntheticConfig)."""

    data_dir: Path | None = None
    synthetic: Any = None

    def path(self, value: str, options: dict) -> Path:
        """A path from a task definition: absolute, else under data_dir, else beside the definition."""
        path = Path(value)
        if path.is_absolute():
            return path
        return (self.data_dir if self.data_dir is not None else Path(options["base"])) / path
