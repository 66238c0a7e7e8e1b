"""Runs a suite: check the output folder, prepare the data and validate every recipe once
(bench.context), plan which runs are left, hand them to an executor (bench.executors), then render
the tables and plots over every record in the folder.

Runs survive interruption: each saves a checkpoint at the end of every epoch (bench.checkpoint),
and running the same command again skips finished runs (their record's settings must match),
resumes unfinished ones from their last checkpoint, and trains the rest. A record is written whole
or not at all; a diverged run gets a record with status "diverged"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mtlbench.bench import checkpoint, examples, executors, plots, tables, verdict
from mtlbench.bench.config import Suite
from mtlbench.bench.context import SuiteContext, comparable_config
from mtlbench.bench.executors.base import RunsLost, Todo
from mtlbench.bench.files import cannot_write, check_writable_folder, exclusive, remove_stray_temporaries
from mtlbench.bench.records import RunRecord, load_records
from mtlbench.tasks.errors import UserError, counted


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the suite; the message says what was kept."""


def check_output(out_dir: Path) -> None:
    """--out must be a directory we can write, or a place one can be made: checked before any
    training, so that a run's results are never lost at the end."""
    check_writable_folder(Path(out_dir), "--out")


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    return [] if old == new else [f"{prefix}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]


class Runner:
    """A suite's runs into one output folder: this shard of the recipe x seed grid, planned against
    the records already there, executed by the executor named, then rendered."""

    def __init__(self, suite: Suite, out_dir: Path, progress: bool = True, log=print, predictions: bool = False,
                 fresh: bool = False, shard: tuple[int, int] = (0, 1)):
        # (i, n): this process trains shard i of n of the recipe x seed grid (job arrays, `--shard`).
        index, count = shard
        if not 0 <= index < count:
            raise UserError(f"--shard {index}/{count}: need 0 <= I < N")
        self.shard = (index, count)
        self.fresh = fresh  # discard this suite's earlier records and checkpoints in out_dir
        self.context = SuiteContext(suite, out_dir, log, progress, predictions)
        self.suite, self.out_dir, self.log = suite, self.context.out_dir, self.context.log
        self.finished = 0

    def grid(self) -> Todo:
        """This shard's recipe x seed runs: of the grid in suite order (recipes, then seeds), every
        n-th from the i-th, so that each shard gets a mix of recipes."""
        index, count = self.shard
        every = [(recipe, seed) for recipe in self.suite.recipes for seed in self.suite.seeds]
        return every[index::count]

    def _existing(self) -> dict[tuple, RunRecord]:
        """Records already in the output directory, by (suite, recipe, seed)."""
        if not self.out_dir.is_dir():
            return {}
        return {(r.suite, r.recipe_name, r.seed): r for r in load_records(self.out_dir, allow_empty=True)}

    def plan(self) -> Todo:
        """The runs still to train. A finished run with the same settings is kept; one with other
        settings is refused (or, with `fresh`, removed with its checkpoints)."""
        existing, todo, refused = self._existing(), [], []
        wanted_configs: dict[int, dict] = {}
        for recipe, seed in self.grid():
            if recipe.position not in wanted_configs:
                wanted_configs[recipe.position] = comparable_config(self.context.run_config(recipe))
            wanted = wanted_configs[recipe.position]
            found = existing.get((self.suite.name, recipe.name, seed))
            if self.fresh:
                if found:
                    found.path.unlink()
                    examples.path_for(found.path).unlink(missing_ok=True)
                shutil.rmtree(checkpoint.run_directory(self.out_dir, self.context.stem(recipe, seed)),
                              ignore_errors=True)
                todo.append((recipe, seed))
            elif found is None:
                todo.append((recipe, seed))
            elif comparable_config(found.config) != wanted:
                changes = _differences(comparable_config(found.config), wanted)
                refused.append(f"{found.path.name} ({'; '.join(changes[:3])}{'; ...' if len(changes) > 3 else ''})")
        if refused:
            raise UserError(f"{self.out_dir} holds runs made with other settings: {refused[0]}"
                            f"{f' and {len(refused) - 1} more' if len(refused) > 1 else ''}; "
                            "use --fresh to replace them, or another --out")
        return todo

    def _plan_on_rank0(self) -> Todo:
        """`plan()`; data parallel, rank 0's plan (it alone reads and removes files), or its error."""
        ranks = self.context.ranks
        if not ranks.active:
            return self.plan()
        planned = None
        try:
            if ranks.writes:
                planned = [(recipe.position, seed) for recipe, seed in self.plan()]
        except UserError as error:
            ranks.broadcast(str(error))
            raise
        planned = ranks.broadcast(planned)
        if isinstance(planned, str):
            raise UserError(planned)
        return [(self.context.recipe_by_position(position), seed) for position, seed in planned]

    def run(self, jobs: int | None = None, executor: str = executors.LOCAL, address: str | None = None
            ) -> list[RunRecord]:
        """Every recipe x seed of this shard not finished yet, by the executor named (bench.executors:
        `local` chooses inline, a worker pool of `jobs`, or torchrun's processes; `ray` sends each
        run to the cluster at `address`). A run's result does not depend on `jobs`, the executor or
        on being resumed."""
        context = self.context
        executors.check_arguments(executor, jobs, address, context.ranks.world)
        context.validate()
        check_output(self.out_dir)
        if context.ranks.writes:
            for stray in remove_stray_temporaries(self.out_dir):
                self.log(f"removed {stray.relative_to(self.out_dir)}, left by a write that was killed")
        _ = context.prepared  # every rank, in the same order of collectives
        todo = self._plan_on_rank0()
        self._log_plan(len(todo))
        chosen = executors.choose(executor, context, todo, jobs, address)
        try:
            lost = chosen.run(todo, lambda record, head=None: self._landed(record, len(todo), head))
        except KeyboardInterrupt:
            raise RunInterrupted(f"{self.finished} of {len(todo)} runs finished this time, records in {self.out_dir}; "
                                 "run the same command again to resume the others from their last epoch "
                                 "checkpoint") from None
        if not context.ranks.writes:
            return []
        records = self._render()
        if lost:
            raise RunsLost(lost, self.out_dir)
        return records

    def _log_plan(self, left: int) -> None:
        suite, total = self.suite, len(self.grid())
        self.log(f"suite '{suite.name}': {counted(len(suite.recipes), 'recipe')} x {counted(len(suite.seeds), 'seed')} "
                 f"on {suite.data} data, "
                 f"model {suite.model}; records -> {self.out_dir}")
        if self.shard[1] > 1:
            self.log(f"shard {self.shard[0]}/{self.shard[1]}: {total} of the "
                     f"{len(suite.recipes) * len(suite.seeds)} runs")
        if left < total:
            self.log(f"{total - left} of {total} runs already finished in {self.out_dir}; "
                     f"{left} to train (--fresh starts over)")

    def _render(self) -> list[RunRecord]:
        """Tables and plots over every record in the directory, so runs added to it (more seeds,
        another recipe, another suite) extend the table instead of replacing it."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise cannot_write(self.out_dir, error) from None
        with exclusive(self.out_dir, wait=True):  # the last renderer sees every record
            every_record = load_records(self.out_dir, allow_empty=True)
            if not every_record:  # a shard with no runs of its own, into an empty directory
                return every_record
            tables.write_tables(every_record, self.out_dir, appendix=verdict.section(every_record))
            if any(r.finished for r in every_record):
                plots.write_plots(every_record, self.out_dir)
            else:
                self.log("no plots: every run diverged")
        return every_record

    def _landed(self, record: RunRecord | None, total: int, head: str | None = None) -> None:
        if record is None:
            return
        self.finished += 1
        head = head or f"[{self.finished}/{total}] {record.recipe_name} seed {record.seed}:"
        if not record.finished:
            place = record.diverged
            self.log(f"{head} diverged ({place['what']} at epoch {place['epoch']}, step {place['step']})")
            return
        metrics = ", ".join(f"{t} {record.metrics[t][m]:.3f}" for t, m in record.primary_metrics.items())
        paired = f"; cost {record.cost['ratio']:.2f}x {record.cost['baseline']}" if record.cost else ""
        self.log(f"{head} {metrics}; overall {record.overall:.3f}; "
                 f"{record.train['examples_per_second']:.0f} train ex/s{paired}")

