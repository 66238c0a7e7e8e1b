"""One JSON record per run, written atomically; loading with clear errors. `RunRecord` is its schema."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal, TypedDict

from bench.errors import UserError

SCHEMA_VERSION = 1


class Diverged(TypedDict):
    what: str  # "non-finite loss (nan)", "non-finite gradient (after the combiner)"
    task: str | None
    epoch: int
    step: int  # 1-based count of training steps, the failing one included


class RunRecord(TypedDict, total=False):
    """One run (recipe x seed) as written to OUT/SUITE.RECIPE-seedN.json. A finished run has every
    key but `diverged`; a diverged one has the identity keys, `status`, `diverged`, `history` (the
    epochs before), `config`, `env` and `created`, and no metrics."""

    schema: int
    run_id: str
    status: Literal["finished", "diverged"]  # absent in records before checkpoints: finished
    suite: str
    recipe_name: str
    recipe_index: int
    recipe: dict[str, Any]  # the strategy names per axis, pooling, pair_head (tasks if a subset)
    seed: int
    tasks: list[str]
    config: dict[str, Any]  # resolved suite settings, recipe with every option, task definitions
    config_hash: str
    primary_metrics: dict[str, str]  # task -> metric
    metrics: dict[str, dict[str, float | None]]  # last epoch's dev metrics per task
    best: dict[str, dict[str, float | None]]  # each task's best dev epoch: {"epoch", metrics...}
    overall: float | None
    overall_best: float | None
    history: list[dict[str, Any]]  # per epoch: epoch, step, dev metrics, train_loss
    train: dict[str, Any]  # examples, steps, seconds, examples_per_second, step_seconds_median
    eval: dict[str, Any]
    cost: dict[str, Any] | None  # paired step cost against the baseline recipe (bench.cost)
    examples_file: str
    peak_memory_mb: float
    memory: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    strategies: dict[str, Any]
    test_at_best_dev: dict[str, dict[str, Any]]
    diverged: Diverged
    env: dict[str, Any]
    created: str


# What tables, plots and the gate read, by status.
REQUIRED = {"finished": ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics", "metrics",
                         "best", "overall", "overall_best", "train", "peak_memory_mb"),
            "diverged": ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics", "diverged")}


def status(record: dict) -> str:
    return record.get("status", "finished")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "undefined" (e.g. correlation of a constant)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k not in ("_dir", "_file")}  # load_records' own
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
            os.fchmod(handle.fileno(), 0o666 & ~umask())  # as an ordinary file; mkstemp makes it 0600
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    os.replace(handle.name, path)


def umask() -> int:
    """The process's umask (reading it means setting it; set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_records(directory: Path, allow_empty: bool = False) -> list[RunRecord]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory of run records")
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text, so not a run record") from None
        except OSError as error:
            raise UserError(f"{path}: cannot read ({error.strerror})") from None
        if isinstance(record, dict) and "run_id" in record:
            kind = status(record)
            if kind not in REQUIRED:
                raise UserError(f"{path}: unknown status {kind!r} (expected 'finished' or 'diverged')")
            missing = [key for key in REQUIRED[kind] if key not in record]
            if missing:
                raise UserError(f"{path}: not a complete run record: missing key '{missing[0]}'"
                                + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
            record["_dir"] = str(directory)  # where its per-example file lies; not written back
            record["_file"] = path.name
            records.append(record)
    if not records and not allow_empty:
        raise UserError(f"{directory}: no run records (*.json with a run_id) found")
    return records


def load_directories(directories: list[Path]) -> list[RunRecord]:
    """The records of several directories as one list (the shards of a suite, or several suites).
    A run found in two directories is an error naming both files: which one counts is not clear."""
    found, seen = [], {}
    for directory in directories:
        for record in load_records(directory):
            key = (record["suite"], record["recipe_name"], record["seed"])
            if key in seen:
                raise UserError(f"{Path(record['_dir']) / record['_file']}: the same run as "
                                f"{seen[key]}; give each run's directory once")
            seen[key] = Path(record["_dir"]) / record["_file"]
            found.append(record)
    return found


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
