"""One run (recipe x seed), start to record: its lock in the output folder, resume from its last
epoch checkpoint, training (bench.trainer), the paired cost (bench.cost), and its `RunRecord`,
written atomically. Every executor calls `run_one`; nothing here knows how runs are scheduled."""

from __future__ import annotations

import contextlib
import functools
import shutil
from datetime import UTC, datetime

import torch
from mtlbench.bench import checkpoint, cost, examples, predictions, tracking
from mtlbench.bench.config import Recipe
from mtlbench.bench.context import SuiteContext, config_hash
from mtlbench.bench.evaluation import best_epoch
from mtlbench.bench.files import exclusive
from mtlbench.bench.records import SCHEMA_VERSION, RunRecord, environment, read_json
from mtlbench.bench.step import Diverged
from mtlbench.bench.tracking import TrackedRun, Trackers
from mtlbench.bench.trainer import TrainingLoop, TrainOutcome
from mtlbench.tasks.errors import UserError


class Pruned(Exception):
    """Raised by a `watch` callback: the run stops after this epoch (a tuning trial the pruner stopped)."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (objective {value:.4f})")
        self.epoch, self.value = epoch, value


def run_one(context: SuiteContext, recipe: Recipe, seed: int, watch=None) -> RunRecord | None:
    """Train (or resume, or find finished) one run and write its record; None if another process
    holds it. Workers call this too: the record is written under the run's lock. `watch(epoch,
    history)` is called after each epoch's checkpoint and may raise `Pruned`."""
    stem = context.stem(recipe, seed)
    lock = context.out_dir / checkpoint.DIRECTORY / f".{stem}.lock"
    record_path = context.out_dir / f"{stem}.json"
    ranks = context.ranks
    with exclusive(lock, wait=False) if ranks.writes else contextlib.nullcontext(None) as taken:
        # Data parallel: rank 0 decides for every rank, which then train together.
        decision = ranks.broadcast("busy" if taken is False else "found" if record_path.exists() else "train")
        if decision == "busy":
            context.log(f"      {stem}: another process is training it; skipped")
            return None
        if decision == "found":  # finished by another process since this one planned
            if not ranks.writes:
                return None
            return RunRecord.from_dict(read_json(record_path), record_path)
        record = train_run(context, recipe, seed, watch)
        if not ranks.writes:
            return None
        record.write(record_path)
        record.path = record_path
        return record


class RunCheckpoints:
    """A run's epoch checkpoints (bench.checkpoint): the one to resume from, a save at each epoch's
    end, and what to keep. Rank 0 alone reads and writes them; every rank resumes from its find."""

    def __init__(self, context: SuiteContext, stem: str, fingerprint: str, specs: dict, epochs: int):
        self.context, self.stem, self.fingerprint, self.specs = context, stem, fingerprint, specs
        self.epochs = epochs
        self.settings = context.suite.checkpoints
        self.folder = checkpoint.run_directory(context.out_dir, stem)
        self.keep_best = context.suite.test if self.settings.keep_best is None else self.settings.keep_best

    def resume_into(self, model: torch.nn.Module) -> tuple[dict | None, bool]:
        """The newest checkpoint that loads, its weights put into `model`, and the rest of its state
        (None: start from the beginning); and whether a broken one left `model` half loaded. A broken
        checkpoint is named and set aside, and the one before it tried. Rank 0 chooses; every rank
        then loads its choice."""
        ranks = self.context.ranks
        chosen, state, touched, error = None, None, False, None
        if self.settings.enabled and ranks.writes:
            try:
                chosen, state, touched = self._choose(model)
            except UserError as refused:
                error = refused
        if ranks.active:  # rank 0's choice, or its refusal, for every rank
            message = ranks.broadcast(str(error) if error else None)
            if message and not error:
                raise UserError(message)
            chosen = ranks.broadcast(chosen)
            if not ranks.writes and chosen is not None:
                state = checkpoint.load_state(chosen)
                checkpoint.load_weights(chosen, model)
        if error:
            raise error
        if chosen is None:
            return None, touched
        self.context.log(f"      {self.stem}: resuming after epoch {state['epoch']}")
        return state, False

    def _choose(self, model: torch.nn.Module) -> tuple:
        """(the newest checkpoint that loads or None, its state, whether a broken one touched `model`)."""
        touched, broken_any = False, False
        for epoch in reversed(checkpoint.epochs(self.folder)):
            path = self.folder / f"epoch-{epoch:04d}"
            try:
                state = checkpoint.load_state(path)
                if state.get("config_hash") != self.fingerprint:
                    raise UserError(f"{path}: a checkpoint of other settings; use --fresh to start over, or another "
                                    "--out")
                touched = True
                checkpoint.load_weights(path, model)
            except checkpoint.BrokenCheckpoint as broken:
                moved = checkpoint.set_aside(path)
                self.context.log(f"      {self.stem}: {broken}; set aside as {moved.name}")
                broken_any = True
                continue
            return path, state, False
        if broken_any:
            self.context.log(f"      {self.stem}: no checkpoint left to resume from; starting the run afresh")
        return None, None, touched

    def best_epochs(self, history: list[dict]) -> set[int]:
        if not self.keep_best:
            return set()
        return {best_epoch(history, task, spec.primary_metric) for task, spec in self.specs.items()}

    def saver(self, model: torch.nn.Module):
        """`on_epoch_end` for the training loop: save the epoch, keep the last `keep` and the best."""
        def save(epoch: int, state_dict) -> None:
            if not self.settings.enabled or not self.context.ranks.writes:
                return
            state = {**state_dict(), "config_hash": self.fingerprint}
            checkpoint.save(self.folder, epoch, model, state)
            checkpoint.prune(self.folder, max(self.settings.keep, 1), self.best_epochs(state["outcome"]["history"]))
            self.context.log(f"      {self.stem}: epoch {epoch}/{self.epochs} checkpoint saved")
        return save

    def finish(self, history: list[dict]) -> None:
        """The run is recorded: keep only the last `keep` epochs (and the best)."""
        if self.settings.enabled:
            checkpoint.prune(self.folder, self.settings.keep, self.best_epochs(history))
            if self.folder.is_dir() and not any(self.folder.iterdir()):
                self.folder.rmdir()


def train_run(context: SuiteContext, recipe: Recipe, seed: int, watch=None) -> RunRecord | None:
    """Build, resume, train and score one run; its record (rank 0), or None on the other ranks."""
    suite, prepared = context.suite, context.prepared
    train = suite.train_for(recipe)
    torch.set_num_threads(train.threads)
    stem = context.stem(recipe, seed)
    specs = {t: context.specs[t] for t in suite.tasks_of(recipe)}
    config = context.run_config(recipe)
    identity = _identity(context, recipe, seed, stem, config)
    saves = RunCheckpoints(context, stem, identity["config_hash"], specs, train.epochs)
    parts = context.build(recipe, seed)
    resume, half_loaded = saves.resume_into(parts.model)
    if half_loaded:  # a broken checkpoint's weights went partly into the model: start from a fresh one
        parts = context.build(recipe, seed)
    loop = TrainingLoop(parts, train, context.device, context.ranks, context.progress, context.predictions,
                        log_every=suite.tracking.log_every)
    if resume is not None:
        loop.load_state_dict(resume)
    if context.on_step is not None:
        loop.on_step = functools.partial(context.on_step, recipe, seed)
    if suite.tracking.report_to and context.ranks.writes:  # rank 0 alone logs; resumed: from its step on
        loop.trackers = _open_trackers(context, TrackedRun(suite.name, recipe.name, seed), loop, config)
    save, history = saves.saver(parts.model), loop.state.outcome.history

    def on_epoch_end(epoch, state_dict):
        save(epoch, state_dict)
        if watch is not None:
            watch(epoch, history)
    try:
        outcome = loop.run(on_epoch_end=on_epoch_end)
        if loop.trackers:
            loop.trackers.finish(loop.state.step, _final_scalars(outcome.history, specs))
    except Diverged as diverged:
        context.log(f"      {recipe.name} seed {seed} diverged: {diverged}")
        if loop.trackers:
            loop.trackers.finish(loop.state.step, {}, failed=True)
        series = loop.state.outcome.series
        return RunRecord(**identity, status="diverged", diverged=diverged.place(), history=loop.state.outcome.history,
                         series=series.to_dict() if series else None, env=environment(context.device), created=_now())
    except Pruned as pruned:
        shutil.rmtree(saves.folder, ignore_errors=True)  # a stopped trial resumes nowhere
        return RunRecord(**identity, status="pruned", pruned={"epoch": pruned.epoch, "value": pruned.value},
                         history=loop.state.outcome.history, env=environment(context.device), created=_now())
    finally:
        if loop.trackers:
            loop.trackers.close()
    parameters = sum(p.numel() for p in parts.model.parameters())
    model = {"name": suite.model, "path": prepared.model_path, "parameters": parameters,
             "max_length": prepared.max_length,
             **({"mlm_head": parts.model.mlm_head_source} if parts.model.mlm_head_source else {})}
    strategies = parts.strategies
    del parts, loop  # before the cost measurement builds its own two models
    if not context.ranks.writes:  # rank 0 writes the files and measures the cost (in one process)
        return None
    record = _finished(context, recipe, seed, identity, outcome, specs, model, strategies)
    saves.finish(outcome.history)
    return record


def _open_trackers(context: SuiteContext, run: TrackedRun, loop: TrainingLoop, config: dict) -> Trackers:
    """The run's trackers from its step on; resumed, they get again what it had logged (for a tracker
    that may have lost it: W&B offline)."""
    trackers = Trackers(context.suite.tracking.report_to, context.out_dir, run, loop.state.step,
                        tracking.flatten("config", config))
    if loop.state.step:
        series = loop.state.outcome.series
        trackers.replay(tracking.logged_points(series.to_dict() if series else None, loop.state.outcome.history))
    return trackers


def _final_scalars(history: list[dict], specs: dict) -> dict[str, float]:
    """What a tracker keeps as the run's result: the last epoch's dev metrics and the overall scores."""
    last, _, overall, overall_best = _summarise(history, specs)
    return {**tracking.flatten("final", last),
            **tracking.flatten("final", {"overall": overall, "overall_best": overall_best})}


def _finished(context: SuiteContext, recipe: Recipe, seed: int, identity: dict, outcome: TrainOutcome,
              specs: dict, model: dict, strategies) -> RunRecord:
    """A finished run's record, with its predictions and per-example dev file written beside it."""
    stem = identity["run_id"]
    if context.predictions:
        predictions.write(context.out_dir / "predictions" / stem, specs, context.prepared.data, outcome.predictions)
    examples_file = context.out_dir / f"{stem}{examples.SUFFIX}"
    examples.write(examples_file, outcome.dev_examples)
    step_cost = cost.paired_step_cost(context, recipe, seed) if context.suite.cost.enabled else None
    last, best, overall, overall_best = _summarise(outcome.history, specs)
    return RunRecord(
        **identity, status="finished", model=model, metrics=last, best=best, overall=overall,
        overall_best=overall_best, history=outcome.history, series=outcome.series.to_dict() if outcome.series else None,
        train=outcome.train, eval=outcome.eval, cost=step_cost,
        examples_file=examples_file.name, peak_memory_mb=outcome.memory["peak_memory_mb"], memory=outcome.memory,
        strategies={"combiner": strategies.combiner.summary(),
                    "regularizers": {r.name: r.summary() for r in strategies.regularizers},
                    "freezing": {"trainable": outcome.trainable}},
        env=environment(context.device), created=_now(),
        test_at_best_dev=outcome.test_at_best_dev if context.suite.test else None,
    )


def _identity(context: SuiteContext, recipe: Recipe, seed: int, stem: str, config: dict) -> dict:
    """The record's keys that name the run and its settings (finished or diverged alike)."""
    data, tasks = context.prepared.data, context.suite.tasks_of(recipe)
    return {
        "schema": SCHEMA_VERSION, "run_id": stem, "suite": context.suite.name, "recipe_name": recipe.name,
        "recipe_index": recipe.position, "recipe": recipe.names(), "seed": seed, "tasks": tasks,
        "config": config, "config_hash": config_hash(config),
        "primary_metrics": {t: context.specs[t].primary_metric for t in tasks},
        "data": {"source": context.suite.data, "sources": {t: d.source for t, d in data.items()},
                 "rows": {t: {s: len(r) for s, r in d.rows.items()} for t, d in data.items()},
                 "skipped": {t: d.skipped for t, d in data.items()},
                 **({"quality": context.prepared.quality} if context.prepared.quality else {})},
        "trial": recipe.trial, "tuned": recipe.tuned, "front": recipe.front,
    }


def _summarise(history: list[dict], specs: dict) -> tuple[dict, dict, float, float]:
    """Last-epoch metrics, best epoch per task (by its primary metric), and the overall means."""
    last = history[-1]["dev"]
    best = {}
    for task, spec in specs.items():
        epoch = best_epoch(history, task, spec.primary_metric)
        best[task] = {"epoch": epoch, **history[epoch - 1]["dev"][task]}

    def overall(table):
        return sum(table[t][specs[t].primary_metric] for t in specs) / len(specs)
    return last, best, overall(last), overall(best)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

