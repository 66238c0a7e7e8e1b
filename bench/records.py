"""One JSON record per run, written atomically; loading with clear errors."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from tasks.errors import UserError

SCHEMA_VERSION = 1


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "undefined" (e.g. correlation of a constant)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "_dir"}  # _dir: set by load_records
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, payload) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    write_text_atomic(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file beside `path`, fsync, rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8") as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    os.replace(handle.name, path)


def load_records(directory: Path) -> list[dict]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory of run records")
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        if isinstance(record, dict) and "run_id" in record:
            record["_dir"] = str(directory)  # where its per-example file lies; not written back
            records.append(record)
    if not records:
        raise UserError(f"{directory}: no run records (*.json with a run_id) found")
    return records


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    import datasets
    import torch
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "datasets": datasets.__version__,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "git_commit": _git_commit(),
    }
