"""Runs a suite: validate every recipe, load data and the encoder once, train each recipe x seed,
write one record per run, then the tables and plots.

Runs survive interruption: each saves a checkpoint at the end of every epoch (bench.checkpoint),
and running the same command again skips finished runs (their record's settings must match),
resumes unfinished ones from their last checkpoint, and trains the rest. A record is written whole
or not at all; a diverged run gets a record with status "diverged"."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import backbone, checkpoint, cost, examples, gate, parallel, plots, predictions, tables
from bench.config import Recipe, Suite
from bench.data import Masker, TaskBatches, encoding_for, tokenize
from bench.errors import UserError
from bench.model import MultiTaskModel
from bench.records import SCHEMA_VERSION, RunRecord, environment, load_records, status, write_json_atomic
from bench.trainer import Diverged, Strategies, best_epoch, seed_everything, select_device, train
from strategies import registry
from tasks.sources import load_task
from tasks.spec import TaskKind

EXECUTORS = ("local", "ray")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the suite; the message says what was kept."""


def make_strategies(recipe: Recipe, where: str, tasks: list[str], batches_per_epoch: dict[str, int],
                    sizes: dict[str, int], seed: int, epochs: int, model: MultiTaskModel | None = None,
                    pair_tasks: bool = True) -> Strategies | None:
    """The one path that validates and builds a recipe's strategies (registry.build); errors name
    `where` (the suite file's recipes[i]) and the axis. Without `model`, the freezing schedule is
    not built (validation before any model exists) and None comes back."""
    sampler = registry.build("sampler", recipe.sampler.name, recipe.sampler.options, batches_per_epoch, sizes,
                             random.Random(seed), epochs, where=f"{where}.sampler")
    regularizers = []
    for i, spec in enumerate(recipe.regularizers):
        regularizer = registry.build("regularizer", spec.name, spec.options,
                                     torch.Generator().manual_seed(seed * 1000 + i + 1),
                                     where=f"{where}.regularizers[{i}]")
        if regularizer.needs_bi_encoder_pairs:
            if not pair_tasks:
                raise UserError(f"{where}.regularizers[{i}]: '{spec.name}' works on pair tasks, and the "
                                f"recipe's tasks ({', '.join(tasks)}) have none")
            if recipe.pair_head == "cross":
                raise UserError(f"{where}.regularizers[{i}]: '{spec.name}' needs the two sides of a pair encoded "
                                "separately, but pair_head = 'cross' encodes each pair as one input (use concat, "
                                "concat_product or cosine)")
        regularizers.append(regularizer)
    combiner = registry.build("combiner", recipe.combiner.name, recipe.combiner.options, tasks,
                              torch.Generator().manual_seed(seed), where=f"{where}.combiner")
    if combiner.needs_several_tasks and (sampler.single_task or len(tasks) < 2):
        raise UserError(f"{where}.combiner: '{recipe.combiner.name}' needs several task losses per step, "
                        f"but sampler '{recipe.sampler.name}' gives one task per step")
    if model is None:
        return None
    freezing = registry.build("freezing", recipe.freezing.name, recipe.freezing.options, model,
                              where=f"{where}.freezing")
    return Strategies(sampler, combiner, regularizers, freezing)


def build_strategies(recipe: Recipe, model: MultiTaskModel, train_sets: dict[str, TaskBatches], seed: int,
                     epochs: int = 1, where: str | None = None) -> Strategies:
    """`make_strategies` for a model and its training batches (a hand-built recipe in Python)."""
    tasks = list(train_sets)
    return make_strategies(recipe, where or f"recipe '{recipe.name}'", tasks, {t: len(b) for t, b in train_sets.items()},
                           {t: len(b.rows) for t, b in train_sets.items()}, seed, epochs, model,
                           pair_tasks=any(b.spec.kind.is_pair for b in train_sets.values()))


def where_of(suite: Suite, recipe: Recipe) -> str:
    return f"{suite.source} recipes[{recipe.position}]"


def validate(suite: Suite) -> None:
    """Everything that can be checked without data or a model, so a bad recipe fails first."""
    extra = [suite.baseline] if suite.baseline and suite.baseline not in suite.recipes else []
    for recipe in suite.recipes + extra:
        tasks = suite.tasks_of(recipe)
        make_strategies(recipe, where_of(suite, recipe), tasks, dict.fromkeys(tasks, 1), dict.fromkeys(tasks, 1),
                        0, suite.train.epochs, pair_tasks=any(suite.specs[t].kind.is_pair for t in tasks))


def check_output(out_dir: Path) -> None:
    """--out must be a directory we can write, or a place one can be made: checked before any
    training, so that a run's results are never lost at the end."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out_dir}: {existing} is not a directory")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".mtlbench-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot write in {existing} ({error.strerror})") from None


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


def comparable_config(config: dict) -> dict:
    """What a run's result depends on, from its record's `config`: not the suite's other seeds, the
    file it came from, its description or the gate's tolerances."""
    suite = {k: v for k, v in config.get("suite", {}).items() if k not in ("seeds", "source", "check", "description",
                                                                     "checkpoints")}
    return {"suite": suite, "recipe": config.get("recipe"), "tasks": config.get("tasks")}


def config_hash(config: dict) -> str:
    return gate.config_hash(comparable_config(config))


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    return [] if old == new else [f"{prefix}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]


def run_stem(suite: str, recipe: str, seed: int) -> str:
    """A run's file name: suite-qualified, so that two suites can share an output directory."""
    return f"{suite}.{recipe}-seed{seed}"


@dataclass
class Prepared:
    """What every run of a suite shares: the data, the resolved task definitions, the encoder's
    path and tokenizer, and the tokenized splits."""

    data: dict
    specs: dict
    splits: tuple[str, ...]
    model_path: str
    tokenizer: object
    pad_id: int
    max_length: int  # the suite's max_length, capped at the encoder's positions
    tokens: dict
    unlabelled_test: frozenset
    seconds: float


def prepare(suite: Suite, log=print) -> Prepared:
    backbone.quiet_transformers()
    started = time.perf_counter()
    data = {t: load_task(suite.data, suite.specs[t], suite.data_dir, suite.synthetic) for t in suite.tasks}
    # The definitions with their label sets resolved (read from a label map or inferred from train).
    specs = {t: suite.specs[t].with_labels(d.labels, d.label_origin) if d.labels else suite.specs[t]
             for t, d in data.items()}
    splits = ("train", "dev", "test") if suite.test else ("train", "dev")
    for task, loaded in data.items():
        if suite.test and not loaded.rows.get("test"):
            raise UserError(f"{suite.source}: test = true, but task '{task}' has no test rows "
                            f"from source '{loaded.source}'")
        for split, reasons in loaded.skipped.items():
            if reasons:
                log(f"  {task}/{split}: skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items()))
    model_path = backbone.resolve(suite.model, suite.tiny_encoder, suite.synthetic, log)
    tokenizer = backbone.load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = backbone.max_positions(model_path, tokenizer)
    max_length = min(suite.train.max_length, limit)  # recorded as model.max_length
    tokens = {}
    cache = backbone.cache_root() / "tokens"
    for mode in sorted({"cross" if r.pair_head == "cross" else "bi" for r in suite.recipes}):
        for task, loaded in data.items():
            for split in splits:
                encoding = encoding_for(specs[task], mode, split, max_length)
                tokens[mode, task, split] = tokenize(loaded.rows[split], tokenizer, encoding, cache)
    # Test rows without labels (the CS224N test files) are for predictions only.
    unlabelled = frozenset(t for t, d in data.items() if suite.test and d.rows["test"]
                           and specs[t].kind.info.labels != "none" and not {"label", "tags"} & set(d.rows["test"][0]))
    return Prepared(data, specs, splits, model_path, tokenizer, pad_id, max_length, tokens, unlabelled,
                    time.perf_counter() - started)


@contextlib.contextmanager
def _exclusive(path: Path, wait: bool):
    """An flock on `path` (a folder locks itself; a file is created), held inside the block: yields
    whether it was taken (with `wait`, always). Used so that two processes writing into one output
    directory never train the same run at once, and render tables one after the other."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing drops the lock


class Runner:
    def __init__(self, suite: Suite, out_dir: Path, progress: bool = True, log=print, predictions: bool = False,
                 fresh: bool = False, shard: tuple[int, int] = (0, 1)):
        self.suite, self.out_dir, self.progress, self.log = suite, Path(out_dir), progress, log
        # (i, n): this process trains shard i of n of the recipe x seed grid (job arrays, `--shard`).
        index, count = shard
        if not 0 <= index < count:
            raise UserError(f"--shard {index}/{count}: need 0 <= I < N")
        self.shard = (index, count)
        self.predictions = predictions  # write each task's per-split predictions (best dev epoch)
        self.fresh = fresh  # discard this suite's earlier records and checkpoints in out_dir
        # Launched by torchrun / accelerate launch: every rank trains each run together (one shard
        # of every batch); rank 0 alone plans, logs and writes (bench.parallel).
        device = select_device(suite.train.device)
        self.ranks = parallel.from_environment(device.type)
        self.device = parallel.local_device(self.ranks, device)
        if not self.ranks.writes:
            self.log, self.progress = (lambda message: None), False

    @functools.cached_property
    def prepared(self) -> Prepared:
        """Data parallel: rank 0 first (it builds the encoder and fills the token cache), then the
        others from the cache; rank 0's error stops every rank."""
        if not self.ranks.active:
            return prepare(self.suite, self.log)
        found, error = None, None
        if self.ranks.writes:
            try:
                found = prepare(self.suite, self.log)
            except UserError as caught:
                error = caught
        message = self.ranks.broadcast(str(error) if error else None)
        if error:
            raise error
        if message:
            raise UserError(message)
        return found or prepare(self.suite, self.log)

    def build(self, recipe: Recipe, seed: int):
        """The model, strategies and data of one run."""
        suite, prepared = self.suite, self.prepared
        seed_everything(seed)
        encoder = backbone.load_encoder(prepared.model_path)
        tasks = suite.tasks_of(recipe)
        model = MultiTaskModel(encoder, [prepared.specs[t] for t in tasks], recipe.pooling, recipe.pair_head,
                               suite.train.single_head, suite.train.dropout, prepared.model_path)
        mode = model.pair_mode
        generator = torch.Generator().manual_seed(seed)
        train_sets = {}
        for i, task in enumerate(suite.tasks):
            if task not in tasks:
                continue
            spec = prepared.specs[task]
            # MLM masks are drawn from the run's seed, one generator per MLM task.
            masker = Masker(prepared.tokenizer, seed * 1000 + 500 + i) if spec.kind is TaskKind.MLM else None
            train_sets[task] = TaskBatches(prepared.tokens[mode, task, "train"], spec, suite.train.batch_size,
                                           prepared.pad_id, generator, masker)
        dev_sets = {t: prepared.tokens[mode, t, "dev"] for t in tasks}
        strategies = build_strategies(recipe, model, train_sets, seed, suite.train.epochs, where_of(suite, recipe))
        return model, strategies, train_sets, dev_sets

    def run_config(self, recipe: Recipe) -> dict:
        return {"suite": self.suite.resolved(), "recipe": recipe.resolved(),
                "tasks": {t: spec.resolved() for t, spec in self.prepared.specs.items()},
                "max_length": self.prepared.max_length}

    # --- one run ------------------------------------------------------------------------------

    def run_one(self, recipe: Recipe, seed: int) -> RunRecord | None:
        """Train (or resume, or find finished) one run and write its record; None if another process
        holds it. Workers call this too: the record is written under the run's lock."""
        stem = run_stem(self.suite.name, recipe.name, seed)
        lock = self.out_dir / checkpoint.DIRECTORY / f".{stem}.lock"
        record_path = self.out_dir / f"{stem}.json"
        with _exclusive(lock, wait=False) if self.ranks.writes else contextlib.nullcontext(None) as taken:
            # Data parallel: rank 0 decides for every rank, which then train together.
            decision = self.ranks.broadcast("busy" if taken is False else "found" if record_path.exists() else "train")
            if decision == "busy":
                self.log(f"      {stem}: another process is training it; skipped")
                return None
            if decision == "found":  # finished by another process since this one planned
                return json.loads(record_path.read_text(encoding="utf-8")) if self.ranks.writes else None
            record = self._train_run(recipe, seed, stem)
            if not self.ranks.writes:
                return None
            write_json_atomic(record_path, record)
            return record

    def _train_run(self, recipe: Recipe, seed: int, stem: str) -> RunRecord:
        suite, prepared = self.suite, self.prepared
        torch.set_num_threads(suite.train.threads)
        tasks = suite.tasks_of(recipe)
        specs = {t: prepared.specs[t] for t in tasks}
        config = self.run_config(recipe)
        fingerprint = config_hash(config)
        model, strategies, train_sets, dev_sets = self.build(recipe, seed)
        test_sets = {t: prepared.tokens[model.pair_mode, t, "test"] for t in tasks} if suite.test else None
        saves = checkpoint.run_directory(self.out_dir, stem)
        settings = suite.checkpoints
        keep_best = suite.test if settings.keep_best is None else settings.keep_best
        resume = None
        last = checkpoint.latest(saves) if settings.enabled and self.ranks.writes else None
        if self.ranks.active:  # every rank resumes from the checkpoint rank 0 found
            last = self.ranks.broadcast(last)
        if last is not None:
            resume = checkpoint.load(last, model)
            if resume.get("config_hash") != fingerprint:
                raise UserError(f"{last}: a checkpoint of other settings; use --fresh to start over, "
                                "or another --out")
            self.log(f"      {stem}: resuming after epoch {resume['epoch']}")

        def best_epochs(history: list[dict]) -> set[int]:
            return {best_epoch(history, t, spec.primary_metric) for t, spec in specs.items()} if keep_best else set()

        def save(epoch: int, state, model=model) -> None:
            if not settings.enabled or not self.ranks.writes:
                return
            state = {**state(), "config_hash": fingerprint}
            checkpoint.save(saves, epoch, model, state)
            checkpoint.prune(saves, max(settings.keep, 1), best_epochs(state["outcome"]["history"]))
            self.log(f"      {stem}: epoch {epoch}/{suite.train.epochs} checkpoint saved")

        base = {
            "schema": SCHEMA_VERSION, "run_id": stem, "suite": suite.name, "recipe_name": recipe.name,
            "recipe_index": recipe.position, "recipe": recipe.names(), "seed": seed, "tasks": tasks,
            "config": config, "config_hash": fingerprint, "primary_metrics": {t: prepared.specs[t].primary_metric
                                                                              for t in tasks},
            "data": {"source": suite.data, "sources": {t: d.source for t, d in prepared.data.items()},
                     "rows": {t: {s: len(r) for s, r in d.rows.items()} for t, d in prepared.data.items()},
                     "skipped": {t: d.skipped for t, d in prepared.data.items()}},
        }
        try:
            outcome = train(model, strategies, train_sets, dev_sets, suite.train, self.device, prepared.pad_id,
                            self.progress, test_sets, prepared.unlabelled_test, keep_predictions=self.predictions,
                            resume=resume, on_epoch_end=save, ranks=self.ranks)
        except Diverged as diverged:
            self.log(f"      {recipe.name} seed {seed} diverged: {diverged}")
            return {**base, "status": "diverged", "diverged": diverged.as_dict(),
                    "history": diverged.outcome.history if diverged.outcome else [],
                    "env": environment(self.device), "created": datetime.now(UTC).isoformat(timespec="seconds")}
        parameters = sum(p.numel() for p in model.parameters())
        mlm_head_source = model.mlm_head_source
        del model, save  # before the cost measurement builds its own two
        last, best, overall, overall_best = _summarise(outcome.history, specs)
        if not self.ranks.writes:  # rank 0 writes the files and measures the cost (in one process)
            return {}
        if self.predictions:
            predictions.write(self.out_dir / "predictions" / stem, specs, prepared.data, outcome.predictions)
        examples_file = self.out_dir / f"{stem}{examples.SUFFIX}"
        examples.write(examples_file, outcome.dev_examples)
        step_cost = cost.paired_step_cost(self, recipe, seed) if suite.cost.enabled else None
        record = {
            **base, "status": "finished",
            "model": {"name": suite.model, "path": prepared.model_path, "parameters": parameters,
                      "max_length": prepared.max_length, **({"mlm_head": mlm_head_source} if mlm_head_source else {})},
            "metrics": last, "best": best, "overall": overall, "overall_best": overall_best,
            "history": outcome.history, "train": outcome.train, "eval": outcome.eval,
            "cost": step_cost, "examples_file": examples_file.name,
            "peak_memory_mb": outcome.memory["peak_memory_mb"], "memory": outcome.memory,
            "strategies": {
                "combiner": strategies.combiner.summary(),
                "regularizers": {r.name: r.summary() for r in strategies.regularizers},
                "freezing": {"trainable": outcome.trainable},
            },
            "env": environment(self.device),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if suite.test:
            record["test_at_best_dev"] = outcome.test_at_best_dev
        if settings.enabled:
            checkpoint.prune(saves, settings.keep, best_epochs(outcome.history))
            if saves.is_dir() and not any(saves.iterdir()):
                saves.rmdir()
        return record

    # --- the suite ----------------------------------------------------------------------------

    def _registered_at_run_time(self) -> list[str]:
        """Strategies of this suite that a worker process would not find (see registry.discoverable)."""
        used = {(axis, spec.name) for r in self.suite.recipes
                for axis, spec in [("sampler", r.sampler), ("combiner", r.combiner), ("freezing", r.freezing)]
                + [("regularizer", g) for g in r.regularizers]}
        return sorted(f"{axis} '{name}'" for axis, name in used
                      if not registry.discoverable(registry.get(axis, name)))

    def default_jobs(self, runs: int, local_strategies: list[str]) -> int:
        """Runs side by side: one per `threads` CPU cores on CPU; one at a time on an accelerator,
        or when a strategy exists only in this process."""
        if self.device.type != "cpu" or local_strategies:
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(runs, cores // self.suite.train.threads))

    def _existing(self) -> dict[tuple, tuple[Path, dict]]:
        """Records already in the output directory, by (suite, recipe, seed)."""
        if not self.out_dir.is_dir():
            return {}
        return {(r["suite"], r["recipe_name"], r["seed"]): (Path(r["_dir"]) / r["_file"], r)
                for r in load_records(self.out_dir, allow_empty=True)}

    def grid(self) -> list[tuple[Recipe, int]]:
        """This shard's recipe x seed runs: of the grid in suite order (recipes, then seeds), every
        n-th from the i-th, so that each shard gets a mix of recipes."""
        index, count = self.shard
        every = [(recipe, seed) for recipe in self.suite.recipes for seed in self.suite.seeds]
        return every[index::count]

    def plan(self) -> list[tuple[Recipe, int]]:
        """The runs still to train. A finished run with the same settings is kept; one with other
        settings is refused (or, with `fresh`, removed with its checkpoints)."""
        existing, todo, refused = self._existing(), [], []
        wanted_configs = {}
        for recipe, seed in self.grid():
            if recipe.position not in wanted_configs:
                wanted_configs[recipe.position] = comparable_config(self.run_config(recipe))
            wanted = wanted_configs[recipe.position]
            stem = run_stem(self.suite.name, recipe.name, seed)
            saves = checkpoint.run_directory(self.out_dir, stem)
            found = existing.get((self.suite.name, recipe.name, seed))
            if self.fresh:
                if found:
                    found[0].unlink()
                    (found[0].parent / f"{found[0].stem}{examples.SUFFIX}").unlink(missing_ok=True)
                shutil.rmtree(saves, ignore_errors=True)
                todo.append((recipe, seed))
            elif found is None:
                todo.append((recipe, seed))
            elif comparable_config(found[1].get("config", {})) != wanted:
                changes = _differences(comparable_config(found[1].get("config", {})), wanted)
                refused.append(f"{found[0].name} ({'; '.join(changes[:3])}{'; ...' if len(changes) > 3 else ''})")
        if refused:
            raise UserError(f"{self.out_dir} holds runs made with other settings: {refused[0]}"
                            f"{f' and {len(refused) - 1} more' if len(refused) > 1 else ''}; "
                            "use --fresh to replace them, or another --out")
        return todo

    def _plan_on_rank0(self) -> list[tuple[Recipe, int]]:
        """`plan()`; data parallel, rank 0's plan (it alone reads and removes files), or its error."""
        if not self.ranks.active:
            return self.plan()
        planned = None
        try:
            if self.ranks.writes:
                planned = [(recipe.position, seed) for recipe, seed in self.plan()]
        except UserError as error:
            self.ranks.broadcast(str(error))
            raise
        planned = self.ranks.broadcast(planned)
        if isinstance(planned, str):
            raise UserError(planned)
        by_position = {recipe.position: recipe for recipe in self.suite.recipes}
        return [(by_position[position], seed) for position, seed in planned]

    def run(self, jobs: int | None = None, executor: str = "local", address: str | None = None) -> list[RunRecord]:
        """Every recipe x seed of this shard not finished yet: `jobs` at a time in worker processes
        (default: `default_jobs`), or, with `executor="ray"`, each as a Ray task on the cluster at
        `address` (default: a local instance; bench.ray_executor). A run's result does not depend
        on `jobs`, the executor or on being resumed."""
        if executor not in EXECUTORS:
            raise UserError(f"--executor: unknown executor '{executor}'; executors: {', '.join(EXECUTORS)}")
        if address is not None and executor != "ray":
            raise UserError("--address: the address of a Ray cluster, for --executor ray")
        if executor == "ray" and (jobs or self.ranks.active):
            raise UserError("--executor ray schedules runs by their resource requests: leave out --jobs, "
                            "and do not start it under torchrun")
        validate(self.suite)
        check_output(self.out_dir)
        _ = self.prepared  # every rank, in the same order of collectives
        todo = self._plan_on_rank0()
        suite = self.suite
        self.log(f"suite '{suite.name}': {len(suite.recipes)} recipes x {len(suite.seeds)} seeds on {suite.data} data, "
                 f"model {suite.model}; records -> {self.out_dir}")
        for recipe in self.suite.recipes:  # every strategy built once, so a bad option fails before any record
            self.build(recipe, 0)
        total = len(self.grid())
        if self.shard[1] > 1:
            self.log(f"shard {self.shard[0]}/{self.shard[1]}: {total} of the {len(suite.recipes) * len(suite.seeds)} runs")
        if len(todo) < total:
            self.log(f"{total - len(todo)} of {total} runs already finished in {self.out_dir}; "
                     f"{len(todo)} to train (--fresh starts over)")
        local_strategies = self._registered_at_run_time()
        if self.ranks.active and (jobs or 1) > 1:
            raise UserError(f"--jobs {jobs}: under torchrun the {self.ranks.world} processes train one run at a "
                            "time together; leave --jobs out")
        if executor == "ray":
            jobs = 0
        elif self.ranks.active:  # the ranks train each run together, one run at a time
            jobs = 1
        else:
            jobs = jobs or self.default_jobs(max(len(todo), 1), local_strategies)
        if (jobs > 1 or executor == "ray") and local_strategies:
            raise UserError(f"{'--jobs ' + str(jobs) if jobs else '--executor ray'}: {', '.join(local_strategies)} "
                            "registered at run time, so worker processes cannot find it; use --jobs 1, or put it "
                            "in a module of strategies/ or an entry point")
        self.finished = 0
        try:
            if executor == "ray":
                from bench import ray_executor

                ray_executor.run(self, todo, address)
            elif jobs == 1 or len(todo) <= 1:
                for n, (recipe, seed) in enumerate(todo, 1):
                    self.log(f"[{n}/{len(todo)}] {recipe.name} seed {seed}")
                    self._landed(self.run_one(recipe, seed), len(todo), head="     ")
            else:
                self._run_in_workers(todo, jobs)
        except KeyboardInterrupt:
            raise RunInterrupted(f"{self.finished} of {len(todo)} runs finished this time, records in {self.out_dir}; "
                                 "run the same command again to resume the others from their last epoch "
                                 "checkpoint") from None
        if not self.ranks.writes:
            return []
        # Render over every record in the directory, so runs added to it (more seeds, another
        # recipe, another suite) extend the table instead of replacing it.
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.out_dir, wait=True):  # the last renderer sees every record
            every_record = load_records(self.out_dir, allow_empty=True)
            if not every_record:  # a shard with no runs of its own, into an empty directory
                return every_record
            tables.write_tables(every_record, self.out_dir)
            if any(status(r) == "finished" for r in every_record):
                plots.write_plots(every_record, self.out_dir)
            else:
                self.log("no plots: every run diverged")
        return every_record

    def _run_in_workers(self, todo: list[tuple[Recipe, int]], jobs: int) -> None:
        self.log(f"{len(todo)} runs, {jobs} at a time in worker processes ({self.suite.train.threads} thread each)")
        # spawn: a fork of a process whose OpenMP threads have run can deadlock.
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(self.suite, os.getpid(), self.out_dir, self.predictions))
        try:
            # Runs with regularisers (2-5x a plain step) first, so that the slowest do not start last.
            ordered = sorted(todo, key=lambda run: -len(run[0].regularizers))
            pending = {pool.submit(_run_in_worker, recipe.position, seed) for recipe, seed in ordered}
            error = None
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    if future.exception() is not None:  # no new runs; those under way still land
                        error = error or future.exception()
                        for other in pending:
                            other.cancel()
                        continue
                    self._landed(future.result(), len(todo))
            if error is not None:
                raise error
        except KeyboardInterrupt:
            # Workers ignore SIGINT; here queued runs are cancelled and SIGTERM stops the running ones
            # (an interrupt in the worker: a checkpoint being written is removed, no record written).
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)

    def _landed(self, record: RunRecord | None, total: int, head: str | None = None) -> None:
        if record is None:
            return
        self.finished += 1
        head = head or f"[{self.finished}/{total}] {record['recipe_name']} seed {record['seed']}:"
        if record.get("status") == "diverged":
            self.log(f"{head} diverged ({record['diverged']['what']} at epoch {record['diverged']['epoch']}, "
                     f"step {record['diverged']['step']})")
            return
        metrics = ", ".join(f"{t} {record['metrics'][t][m]:.3f}" for t, m in record["primary_metrics"].items())
        paired = f"; cost {record['cost']['ratio']:.2f}x {record['cost']['baseline']}" if record.get("cost") else ""
        self.log(f"{head} {metrics}; overall {record['overall']:.3f}; "
                 f"{record['train']['examples_per_second']:.0f} train ex/s{paired}")


_worker: Runner | None = None


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the process that started it exits, however it
    exits (kill -9 included). The check after it covers a parent that died before the call."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers finish their run, then find no parent
        return
    if os.getppid() != parent:
        os._exit(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _start_worker(suite: Suite, parent: int, out_dir: Path, predictions_wanted: bool) -> None:
    """A worker process's runner: data, encoder and tokens from the cache the parent filled.
    `parent` comes from the parent itself: if it died while this worker started, getppid() here
    would already name the process that adopted the worker. Ctrl-C reaches the whole process
    group; the parent alone handles it and stops the workers."""
    global _worker
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    _worker = Runner(suite, out_dir, progress=False, log=lambda message: None, predictions=predictions_wanted)
    _ = _worker.prepared


def _run_in_worker(position: int, seed: int) -> RunRecord | None:
    recipe = next(r for r in _worker.suite.recipes if r.position == position)
    return _worker.run_one(recipe, seed)
