"""The Python API, installed as `mtlbench`: what the command line does, as functions.

    import mtlbench
    records = mtlbench.run("quick", epochs=1, recipes=["joint_sum", "joint_pcgrad"], out="runs/try")
    print(mtlbench.markdown(records))

(the README's "Python API" section has a complete example, run by tests/test_api.py).

A strategy registered in the notebook (`@mtlbench.register("combiner", "mine")`) can be named in a
suite given as a dict; its runs train in this process (worker processes would not know it)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mtlbench.bench import config, executors, gate, records
from mtlbench.bench.config import Suite
from mtlbench.bench.own_loop import StrategyStep, TaskInputs
from mtlbench.bench.records import RunRecord
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError

if TYPE_CHECKING:
    import pandas

__all__ = ["RunRecord", "StrategyStep", "Suite", "TaskInputs", "UserError", "check", "load_baseline", "load_records", "load_suite",
           "make_baseline", "markdown", "register", "run", "table", "tune", "verdict"]


def __getattr__(name: str):
    """`mtlbench.MultiTaskTrainer` (docs/hf_trainer.md), imported when first used: the Trainer and
    accelerate are slow to import and the rest of the API does not need them (so it is not in
    __all__, which a star import would resolve at once)."""
    if name == "MultiTaskTrainer":
        from mtlbench.bench.hf_trainer import MultiTaskTrainer
        return MultiTaskTrainer
    raise AttributeError(f"module 'mtlbench' has no attribute {name!r}")


LOGGER = logging.getLogger("mtlbench")


def log_to_logging(message: str) -> None:
    """The default `log` of `run` and `tune`: the logger "mtlbench", at INFO (what the command line
    prints; `logging.basicConfig(level=logging.INFO)` shows it), warnings at WARNING (shown with no
    set-up at all: a run on text its tokenizer does not know must not be silent)."""
    LOGGER.log(logging.WARNING if message.lstrip().startswith("warning:") else logging.INFO, message.strip())


def load_suite(suite: str | Path | dict | Suite, **overrides) -> Suite:
    """A suite by name ("quick"), path to a .toml file, or dict shaped like one. `overrides`:
    top-level keys (model, data, data_dir, seeds, test, baseline, ...) or [train] settings
    (epochs, lr, batch_size, threads, ...)."""
    if isinstance(suite, Suite):
        if overrides:
            raise UserError("overrides apply to a suite being loaded; make a changed Suite with "
                            "dataclasses.replace(suite, ...) instead")
        return suite
    if isinstance(suite, dict):
        return Suite.from_dict(suite, **overrides)
    return config.load_suite(str(suite), overrides)


def run(suite: str | Path | dict | Suite, *, out: str | Path | None = None, recipes: list[str] | None = None,
        jobs: int | None = None, fresh: bool = False, progress: bool = False, predictions: bool = False,
        log=None, executor: str = executors.LOCAL, address: str | None = None, shard: tuple[int, int] = (0, 1),
        **overrides) -> list[RunRecord]:
    """Train every recipe x seed of `suite` (see `load_suite` for `overrides`) into `out` (default
    runs/SUITE-TIME), and return every record there. As the CLI: finished runs with the same
    settings are kept, unfinished ones resume from their last checkpoint (`fresh` starts over);
    bad input raises UserError before anything trains. `executor`: one of `executors.CHOICES`
    (`"ray"` runs each recipe x seed as a Ray task on the cluster at `address`); `shard=(i, n)`
    trains the i-th of n shards of the grid."""
    from mtlbench.bench.runner import Runner

    loaded = load_suite(suite, **overrides)
    if recipes:
        loaded = loaded.with_recipes(list(recipes))
    out = Path(out or Path("runs") / f"{loaded.name}-{datetime.now():%Y%m%d-%H%M%S}")
    runner = Runner(loaded, out, progress=progress, log=log or log_to_logging, predictions=predictions,
                    fresh=fresh, shard=shard)
    return runner.run(jobs, executor, address)


def tune(suite: str | Path | dict | Suite, *, out: str | Path, trials: int | None = None, storage: str | None = None,
         recipes: list[str] | None = None, jobs: int | None = None, executor: str = executors.LOCAL,
         address: str | None = None, final: bool = True, log=None, **overrides) -> list[RunRecord]:
    """`mtlbench tune`: every recipe tuned at the same budget on a split held out of train (Optuna
    studies in `storage`, default OUT/tune/study.db), then run with its best settings for the
    suite's seeds into `out`; returns those records (their `tuned` says how). bench.tuning explains."""
    from mtlbench.bench.tune_runner import tune as tune_suite

    loaded = load_suite(suite, **overrides)
    if recipes:
        loaded = loaded.with_recipes(list(recipes))
    return tune_suite(loaded, Path(out), trials, storage, jobs, executor, address, final, log or log_to_logging)


def verdict(runs: list[RunRecord], select: str = "last") -> str:
    """The verdict of each recipe against the baseline, as markdown (bench.verdict)."""
    from mtlbench.bench import verdict as verdicts

    return verdicts.markdown(verdicts.verdicts(runs, select))


def load_records(directory: str | Path) -> list[RunRecord]:
    """Every run record in `directory` (a UserError names a corrupted or incomplete one)."""
    return records.load_records(Path(directory))


def table(runs: list[RunRecord], select: str = "last") -> pandas.DataFrame:
    """Per (suite, recipe): mean, std, 95 % interval, seeds, Δm % and significance (bench.tables)."""
    from mtlbench.bench import tables  # pandas and SciPy: when a table is asked for

    return tables.summary(runs, select)


def markdown(runs: list[RunRecord], select: str = "last") -> str:
    """The table the CLI prints."""
    from mtlbench.bench import tables

    return tables.markdown(tables.summary(runs, select))


def make_baseline(runs: list[RunRecord], select: str = "last") -> dict:
    """What `mtlbench baseline` writes (save it with json, or pass it to `check`)."""
    return gate.make_baseline(runs, select)


def load_baseline(path: str | Path) -> dict:
    return gate.load_baseline(Path(path))


def check(runs: list[RunRecord], baseline: str | Path | dict) -> gate.CheckResult:
    """Compare `runs` with a baseline (a file written by `mtlbench baseline`, or its dict);
    `.failed` says whether the gate fails, `gate.markdown(result)` renders it."""
    path = Path(baseline) if not isinstance(baseline, dict) else Path("<baseline>")
    loaded = gate.load_baseline(path) if not isinstance(baseline, dict) else baseline
    return gate.check(runs, loaded, path)
