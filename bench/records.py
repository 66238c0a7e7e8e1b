"""One JSON record per run: `RunRecord`, the typed object every reader (tables, gate, plots, the
API) gets, written atomically and loaded with clear errors.

The JSON schema is the record's fields in declaration order, by status: a finished run has every
key but `diverged` and `pruned` (`test_at_best_dev` only when its suite scores test; `tuned`, `trial`
and `front` only on runs of `mtlbench tune` and points of the scalarisation front); a diverged one
has the identity keys, `status`, `diverged`, `history` (the epochs before), `env` and `created`; a
trial the pruner stopped (status "pruned") has `pruned` in place of `diverged`, and `trial`."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from mtlbench.bench.files import write_json_atomic
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.files import decode

SCHEMA_VERSION = 1


@dataclass
class RunRecord:
    """One run (recipe x seed), as written to OUT/SUITE.RECIPE-seedN.json."""

    schema: int
    run_id: str
    suite: str
    recipe_name: str
    recipe_index: int
    recipe: dict[str, Any]  # the strategy names per axis, pooling, pair_head (tasks if a subset)
    seed: int
    tasks: list[str]
    config: dict[str, Any]  # resolved suite settings, recipe with every option, task definitions
    config_hash: str
    primary_metrics: dict[str, str]  # task -> metric
    data: dict[str, Any] | None = None  # source, rows and skipped rows per task and split
    status: Literal["finished", "diverged", "pruned"] = "finished"  # absent in records before checkpoints
    diverged: dict[str, Any] | None = None  # bench.step.Diverged.place(): what, task, epoch, step
    pruned: dict[str, Any] | None = None  # a tuning trial stopped early: epoch, value (bench.tuning)
    model: dict[str, Any] | None = None
    metrics: dict[str, dict[str, float | None]] | None = None  # last epoch's dev metrics per task
    best: dict[str, dict[str, float | None]] | None = None  # each task's best dev epoch: {"epoch", metrics...}
    overall: float | None = None
    overall_best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: epoch, step, dev metrics, train_loss
    series: dict[str, Any] | None = None  # the tracked step scalars, thinned: every, steps, values (bench.tracking)
    train: dict[str, Any] | None = None  # examples, steps, seconds, examples_per_second, step_seconds_median
    eval: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None  # paired step cost against the baseline recipe (bench.cost)
    examples_file: str | None = None
    peak_memory_mb: float | None = None
    memory: dict[str, Any] | None = None
    strategies: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    created: str | None = None
    test_at_best_dev: dict[str, dict[str, Any]] | None = None
    trial: dict[str, Any] | None = None  # a tuning trial: study, recipe, number, parameters (bench.tuning)
    tuned: dict[str, Any] | None = None  # a run with tuned settings: trials, best trial, parameters, budget
    front: dict[str, Any] | None = None  # a point of the scalarisation front: its weights (bench.front)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer schema, kept as they were
    path: Path | None = None  # the file it was loaded from; not written

    IDENTITY: ClassVar[tuple[str, ...]] = ("schema", "run_id", "suite", "recipe_name", "recipe_index", "recipe",
                                          "seed", "tasks", "config", "config_hash", "primary_metrics", "data")
    KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "finished": IDENTITY + ("status", "model", "metrics", "best", "overall", "overall_best", "history", "series", "train",
                                "eval", "cost", "examples_file", "peak_memory_mb", "memory", "strategies", "env",
                                "created", "test_at_best_dev", "trial", "tuned", "front"),
        "diverged": IDENTITY + ("status", "diverged", "history", "series", "env", "created", "trial", "tuned", "front"),
        "pruned": IDENTITY + ("status", "pruned", "history", "env", "created", "trial"),
    }
    # written only when present
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"test_at_best_dev", "trial", "tuned", "front", "series"})
    # What tables, plots and the gate read, by status: a record without one of these is refused.
    REQUIRED: ClassVar[dict[str, tuple[str, ...]]] = {
        "finished": ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics", "metrics",
                     "best", "overall", "overall_best", "train", "peak_memory_mb"),
        "diverged": ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics", "diverged"),
        "pruned": ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics", "pruned", "trial"),
    }

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def examples_path(self) -> Path | None:
        """The per-example dev predictions beside the record, if they are there."""
        if not self.examples_file or self.path is None:
            return None
        found = self.path.parent / self.examples_file
        return found if found.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        """Today's JSON schema: the status's keys in order, then any kept newer keys."""
        keys = [k for k in self.KEYS[self.status] if k not in self.OPTIONAL or getattr(self, k) is not None]
        return {**{k: getattr(self, k) for k in keys}, **self.extra}

    @classmethod
    def from_dict(cls, values: dict, path: Path | None = None) -> RunRecord:
        """A record from its JSON object; a UserError names `path` and the first missing key."""
        where = path if path is not None else "run record"
        status = values.get("status", "finished")
        if status not in cls.REQUIRED:
            raise UserError(f"{where}: unknown status {status!r} (expected 'finished', 'diverged' or 'pruned')")
        missing = [key for key in cls.REQUIRED[status] if key not in values]
        if missing:
            raise UserError(f"{where}: not a complete run record: missing key '{missing[0]}'"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        _check_types(values, where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "path"}
        fields = {k: v for k, v in values.items() if k in known}
        fields.setdefault("schema", 0)
        for key in ("recipe", "config", "primary_metrics"):
            fields.setdefault(key, {})
        fields.setdefault("config_hash", "")
        fields.setdefault("tasks", list(values.get("primary_metrics", {})))
        return cls(**fields, extra={k: v for k, v in values.items() if k not in known}, path=path)

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


# What readers compute with, by type: a record holding anything else is refused on load, naming the key.
_SCALARS = {"run_id": str, "suite": str, "recipe_name": str, "recipe_index": int, "seed": int,
            "overall": "number", "overall_best": "number", "peak_memory_mb": "number", "examples_file": str}
_NUMBERS_IN = {"train": ("examples_per_second", "step_seconds_median"), "cost": ("ratio",)}


def _number_or_null(value) -> bool:
    """A finite number, or null (undefined: the correlation of a constant); NaN is never written."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _check_types(values: dict, where) -> None:
    def wrong(key: str, value) -> UserError:
        return UserError(f"{where}: {key}: {value!r} is not what a run record holds there")
    for key, kind in _SCALARS.items():
        if key not in values:  # presence is REQUIRED's to check
            continue
        value = values[key]
        if kind == "number":
            ok = _number_or_null(value)
        else:
            ok = (value is None and key == "examples_file") or (
                isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
        if not ok:
            raise wrong(key, value)
    if not isinstance(values.get("primary_metrics"), dict) or not all(
            isinstance(t, str) and isinstance(m, str) for t, m in values["primary_metrics"].items()):
        raise wrong("primary_metrics", values.get("primary_metrics"))
    for key in ("metrics", "best", "test_at_best_dev"):
        table = values.get(key)
        if table is None and key not in values:
            continue
        if not isinstance(table, dict) or not all(isinstance(m, dict) for m in table.values()):
            raise wrong(key, table)
        for task, metrics in table.items():
            for metric, value in metrics.items():
                if not _number_or_null(value):
                    raise wrong(f"{key}.{task}.{metric}", value)
    for key, numbers in _NUMBERS_IN.items():
        if values.get(key) is not None:
            if not isinstance(values[key], dict):
                raise wrong(key, values[key])
            for name in numbers:
                if name in values[key] and not _number_or_null(values[key][name]):
                    raise wrong(f"{key}.{name}", values[key][name])


def read_json(path: Path):
    """A JSON file of mtlbench's (a record, a baseline) through the one guard on reading a user's
    file (tasks.files.read_user_file), or one line saying what is wrong with it."""
    try:
        return json.loads(decode(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a run record or a baseline") from None


def load_records(directory: Path, allow_empty: bool = False) -> list[RunRecord]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory of run records")
    records = []
    for path in sorted(directory.glob("*.json")):
        values = read_json(path)
        if isinstance(values, dict) and "run_id" in values:
            records.append(RunRecord.from_dict(values, path))
    if not records and not allow_empty:
        raise UserError(f"{directory}: no run records (*.json with a run_id) found{_folders_with_records(directory)}")
    return records


def _folders_with_records(directory: Path) -> str:
    """'; its folders with records, newest first: ...' when the records are a level down (runs/)."""
    below = sorted({p.parent for p in directory.glob("*/*.json") if not p.name.startswith(".")},
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not below:
        return ""
    shown = ", ".join(str(p) for p in below[:3]) + (f" and {len(below) - 3} more" if len(below) > 3 else "")
    return f"; its folders with records, newest first: {shown} (give one, or several to merge)"


def load_directories(directories: list[Path]) -> list[RunRecord]:
    """The records of several directories as one list (the shards of a suite, or several suites).
    A run found in two directories is an error naming both files: which one counts is not clear."""
    found, seen = [], {}
    for directory in directories:
        for record in load_records(directory):
            key = (record.suite, record.recipe_name, record.seed)
            if key in seen:
                raise UserError(f"{record.path}: the same run as {seen[key]}; give each run's directory once")
            seen[key] = record.path
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
        "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def cpu_model() -> str:
    """The processor's name (/proc/cpuinfo on Linux): float rounding, and so a run's last digits,
    can differ between CPU models of one architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
