"""The benchmark scripts' saved figures: one JSON file per measurement in a folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def measurements(folder: Path) -> Iterator[tuple[str, dict]]:
    """(file name, its figures) for every measurement in `folder`, in name order."""
    for path in sorted(folder.glob("*.json")):
        yield path.name, json.loads(path.read_text())
