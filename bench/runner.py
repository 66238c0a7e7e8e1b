"""Runs a suite: validate every recipe, load data and the encoder once, train each recipe x seed,
write one record per run, then the tables and plots."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import backbone, cost, examples, plots, predictions, tables
from bench.config import Recipe, Suite
from bench.data import Masker, TaskBatches, encoding_for, tokenize
from bench.model import MultiTaskModel
from bench.records import SCHEMA_VERSION, environment, load_records, write_json_atomic
from bench.trainer import Strategies, best_epoch, seed_everything, select_device, train
from strategies import registry
from tasks.errors import UserError
from tasks.sources import load_task
from tasks.spec import TaskKind


def _combiner(recipe: Recipe, tasks: list[str], seed: int):
    cls = registry.get("combiner", recipe.combiner.name)
    generator = torch.Generator().manual_seed(seed)
    return cls(cls.Options(**recipe.combiner.options), tasks, generator)


def validate(suite: Suite) -> None:
    """Everything that can be checked without training, so a bad recipe fails before any record.
    An error names the suite file and the recipe."""
    extra = [suite.baseline] if suite.baseline and suite.baseline not in suite.recipes else []
    for recipe in suite.recipes + extra:
        try:
            _validate_recipe(suite, recipe)
        except UserError as error:
            raise UserError(f"{suite.source} recipe '{recipe.name}': {error}") from None


def _validate_recipe(suite: Suite, recipe: Recipe) -> None:
    sampler_cls = registry.get("sampler", recipe.sampler.name)
    # Built once with placeholder sizes, so that option values a strategy checks (a task name)
    # fail here too; freezing schedules need the model and are checked when it exists.
    tasks = suite.tasks_of(recipe)
    sampler_cls(sampler_cls.Options(**recipe.sampler.options), dict.fromkeys(tasks, 1),
                dict.fromkeys(tasks, 1), random.Random(0), suite.train.epochs)
    for spec in recipe.regularizers:
        cls = registry.get("regularizer", spec.name)
        cls(cls.Options(**spec.options), torch.Generator())
        if cls.needs_bi_encoder_pairs:
            if not any(suite.specs[t].kind.is_pair for t in tasks):
                raise UserError(f"regularizer '{spec.name}' works on pair tasks, "
                                f"and the recipe's tasks ({', '.join(tasks)}) have none")
            if recipe.pair_head == "cross":
                raise UserError(f"regularizer '{spec.name}' needs the two sides of a pair encoded separately, "
                                "but pair_head = 'cross' encodes each pair as one input (use concat, "
                                "concat_product or cosine)")
    combiner = _combiner(recipe, tasks, 0)
    if combiner.needs_several_tasks and (sampler_cls.single_task or len(tasks) < 2):
        raise UserError(f"combiner '{recipe.combiner.name}' needs several task losses per step, "
                        f"but sampler '{recipe.sampler.name}' gives one task per step")


def build_strategies(recipe: Recipe, model: MultiTaskModel, train_sets: dict[str, TaskBatches], seed: int,
                     epochs: int = 1) -> Strategies:
    tasks = list(train_sets)
    sampler_cls = registry.get("sampler", recipe.sampler.name)
    sampler = sampler_cls(sampler_cls.Options(**recipe.sampler.options),
                          batches_per_epoch={t: len(b) for t, b in train_sets.items()},
                          sizes={t: len(b.rows) for t, b in train_sets.items()}, generator=random.Random(seed),
                          epochs=epochs)
    regularizers = []
    for i, spec in enumerate(recipe.regularizers):
        cls = registry.get("regularizer", spec.name)
        regularizers.append(cls(cls.Options(**spec.options), torch.Generator().manual_seed(seed * 1000 + i + 1)))
    freezing_cls = registry.get("freezing", recipe.freezing.name)
    freezing = freezing_cls(freezing_cls.Options(**recipe.freezing.options), model)
    return Strategies(sampler, _combiner(recipe, tasks, seed), regularizers, freezing)


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


class Runner:
    def __init__(self, suite: Suite, out_dir: Path, progress: bool = True, log=print, predictions: bool = False):
        self.suite, self.out_dir, self.progress, self.log = suite, Path(out_dir), progress, log
        self.predictions = predictions  # write each task's per-split predictions (best dev epoch)
        self.device = select_device(suite.train.device)

    def prepare(self) -> None:
        suite = self.suite
        backbone.quiet_transformers()
        started = time.perf_counter()
        self.data = {t: load_task(suite.data, suite.specs[t], suite.data_dir, suite.synthetic) for t in suite.tasks}
        # The definitions with their label sets resolved (read from a label map or inferred from train).
        self.specs = {t: suite.specs[t].with_labels(d.labels, d.label_origin) if d.labels else suite.specs[t]
                      for t, d in self.data.items()}
        self.splits = ("train", "dev", "test") if suite.test else ("train", "dev")
        for task, data in self.data.items():
            if suite.test and not data.rows.get("test"):
                raise UserError(f"{suite.source}: test = true, but task '{task}' has no test rows "
                                f"from source '{data.source}'")
            for split, reasons in data.skipped.items():
                if reasons:
                    self.log(f"  {task}/{split}: skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items()))
        self.model_path = backbone.resolve(suite.model, suite.tiny_encoder, suite.synthetic, self.log)
        self.tokenizer = backbone.load_tokenizer(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.tokens = {}
        cache = backbone.cache_root() / "tokens"
        for mode in sorted({"cross" if r.pair_head == "cross" else "bi" for r in suite.recipes}):
            for task, data in self.data.items():
                for split in self.splits:
                    encoding = encoding_for(self.specs[task], mode, split, suite.train.max_length)
                    self.tokens[mode, task, split] = tokenize(data.rows[split], self.tokenizer, encoding, cache)
        # Test rows without labels (the CS224N test files) are for predictions only.
        self.unlabelled_test = frozenset(t for t, d in self.data.items() if suite.test and d.rows["test"]
                                         and self.specs[t].kind.info.labels != "none"
                                         and not {"label", "tags"} & set(d.rows["test"][0]))
        self.prepare_seconds = time.perf_counter() - started

    def build(self, recipe: Recipe, seed: int):
        """The model, strategies and data of one run."""
        suite = self.suite
        seed_everything(seed)
        encoder = backbone.load_encoder(self.model_path)
        tasks = suite.tasks_of(recipe)
        model = MultiTaskModel(encoder, [self.specs[t] for t in tasks], recipe.pooling, recipe.pair_head,
                               suite.train.single_head, suite.train.dropout, self.model_path)
        mode = model.pair_mode
        generator = torch.Generator().manual_seed(seed)
        train_sets = {}
        for i, task in enumerate(suite.tasks):
            if task not in tasks:
                continue
            spec = self.specs[task]
            # MLM masks are drawn from the run's seed, one generator per MLM task.
            masker = Masker(self.tokenizer, seed * 1000 + 500 + i) if spec.kind is TaskKind.MLM else None
            train_sets[task] = TaskBatches(self.tokens[mode, task, "train"], spec, suite.train.batch_size,
                                           self.pad_id, generator, masker)
        dev_sets = {t: self.tokens[mode, t, "dev"] for t in tasks}
        return model, build_strategies(recipe, model, train_sets, seed, suite.train.epochs), train_sets, dev_sets

    def run_one(self, index: int, recipe: Recipe, seed: int) -> dict:
        suite = self.suite
        torch.set_num_threads(suite.train.threads)
        tasks = suite.tasks_of(recipe)
        specs = {t: self.specs[t] for t in tasks}
        model, strategies, train_sets, dev_sets = self.build(recipe, seed)
        test_sets = {t: self.tokens[model.pair_mode, t, "test"] for t in tasks} if suite.test else None
        outcome = train(model, strategies, train_sets, dev_sets, suite.train, self.device, self.pad_id, self.progress,
                        test_sets, self.unlabelled_test, keep_predictions=self.predictions)
        parameters = sum(p.numel() for p in model.parameters())
        mlm_head_source = model.mlm_head_source
        del model  # before the cost measurement builds its own two
        last, best, overall, overall_best = _summarise(outcome.history, specs)
        run_id = f"{recipe.name}-seed{seed}"
        if self.predictions:
            predictions.write(self.out_dir / "predictions" / run_id, specs, self.data, outcome.predictions)
        examples_file = self.out_dir / f"{run_id}{examples.SUFFIX}"
        examples.write(examples_file, outcome.dev_examples)
        step_cost = cost.paired_step_cost(self, recipe, seed) if suite.cost.enabled else None
        record = {
            "schema": SCHEMA_VERSION, "run_id": run_id, "suite": suite.name, "recipe_name": recipe.name,
            "recipe_index": index, "recipe": recipe.names(), "seed": seed, "tasks": tasks,
            "model": {"name": suite.model, "path": self.model_path, "parameters": parameters,
                      **({"mlm_head": mlm_head_source} if mlm_head_source else {})},
            "config": {"suite": suite.resolved(), "recipe": recipe.resolved(),
                       "tasks": {t: spec.resolved() for t, spec in self.specs.items()}},
            "data": {"source": suite.data, "sources": {t: d.source for t, d in self.data.items()},
                     "rows": {t: {s: len(r) for s, r in d.rows.items()} for t, d in self.data.items()},
                     "skipped": {t: d.skipped for t, d in self.data.items()}},
            "primary_metrics": {t: self.specs[t].primary_metric for t in tasks},
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
        return record

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

    def run(self, jobs: int | None = None) -> list[dict]:
        """Every recipe x seed, `jobs` at a time in worker processes (default: `default_jobs`).
        A run's result does not depend on `jobs`: each run sets its own seed and thread count."""
        validate(self.suite)
        self.prepare()
        for recipe in self.suite.recipes:  # every strategy built once, so a bad option fails before any record
            self.build(recipe, 0)
        runs = [(r, s) for r in self.suite.recipes for s in self.suite.seeds]
        local_strategies = self._registered_at_run_time()
        jobs = jobs or self.default_jobs(len(runs), local_strategies)
        if jobs > 1 and local_strategies:
            raise UserError(f"--jobs {jobs}: {', '.join(local_strategies)} registered at run time, "
                            "so worker processes cannot find it; use --jobs 1, or put it in a module of "
                            "strategies/ or an entry point")
        if jobs == 1:
            for n, (recipe, seed) in enumerate(runs, 1):
                self.log(f"[{n}/{len(runs)}] {recipe.name} seed {seed}")
                self._keep(self.run_one(recipe.position, recipe, seed))
        else:
            self.log(f"{len(runs)} runs, {jobs} at a time in worker processes ({self.suite.train.threads} "
                     "thread each)")
            # spawn: a fork of a process whose OpenMP threads have run can deadlock.
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_start_worker,
                                     initargs=(self.suite, os.getpid(), self.out_dir, self.predictions)) as pool:
                # Runs with regularisers (2-5x a plain step) first, so that the slowest do not start last.
                ordered = sorted(runs, key=lambda run: -len(run[0].regularizers))
                pending = {pool.submit(_run_in_worker, recipe.position, seed) for recipe, seed in ordered}
                done, error = 0, None
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
                        done += 1
                        record = future.result()
                        self.log(f"[{done}/{len(runs)}] {record['recipe_name']} seed {record['seed']}")
                        self._keep(record)
            if error is not None:
                raise error
        # Render over every record in the directory, so runs added to it (more seeds, another
        # recipe) extend the table instead of replacing it.
        every_record = load_records(self.out_dir)
        tables.write_tables(every_record, self.out_dir)
        plots.write_plots(every_record, self.out_dir)
        return every_record

    def _keep(self, record: dict) -> None:
        write_json_atomic(self.out_dir / f"{record['run_id']}.json", record)
        metrics = ", ".join(f"{t} {record['metrics'][t][m]:.3f}" for t, m in record["primary_metrics"].items())
        paired = f"; cost {record['cost']['ratio']:.2f}x {record['cost']['baseline']}" if record.get("cost") else ""
        self.log(f"      {metrics}; overall {record['overall']:.3f}; "
                 f"{record['train']['examples_per_second']:.0f} train ex/s{paired}")


_worker: Runner | None = None


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed would train on for nobody: it exits instead."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _start_worker(suite: Suite, parent: int, out_dir: Path, predictions_wanted: bool) -> None:
    """A worker process's runner: data, encoder and tokens from the cache the parent filled.
    `parent` comes from the parent itself: if it died while this worker started, getppid() here
    would already name the process that adopted the worker."""
    global _worker
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker = Runner(suite, out_dir, progress=False, log=lambda message: None, predictions=predictions_wanted)
    _worker.prepare()


def _run_in_worker(position: int, seed: int) -> dict:
    recipe = next(r for r in _worker.suite.recipes if r.position == position)
    return _worker.run_one(position, recipe, seed)
