"""Where a suite's runs are assembled, in one place: `SuiteContext` holds the suite, its output
folder, the device and ranks this process trains on and the prepared data (made once), validates
every recipe once, and builds each run's parts (model, strategies, batches) through one path. The
single run (bench.single_run), the executors and the cost measurement all work from it."""

from __future__ import annotations

import functools
import random
import warnings
from pathlib import Path

import torch
from mtlbench.bench import backbone, gate, parallel, tracking
from mtlbench.bench.config import Recipe, Suite
from mtlbench.bench.data import Masker, TaskBatches
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.prepared import Prepared, prepare
from mtlbench.bench.step import Strategies
from mtlbench.bench.trainer import RunParts, seed_everything, select_device
from mtlbench.strategies import registry
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.spec import TaskKind, TaskSpec


def _silent(message: str) -> None:
    pass


def make_strategies(recipe: Recipe, model: MultiTaskModel, batches_per_epoch: dict[str, int], sizes: dict[str, int],
                    seed: int, epochs: int, where: str) -> Strategies:
    """The one path that builds a recipe's strategies from its validated options (registry.build),
    with the checks that need the run's tasks and model; errors name `where` (the suite file's
    recipes[i]) and the axis. `model` may be an outline (`SuiteContext.outline`)."""
    tasks = list(batches_per_epoch)
    sampler = registry.build("sampler", recipe.sampler.name, recipe.sampler.options, batches_per_epoch, sizes,
                             random.Random(seed), epochs, where=f"{where}.sampler")
    pair_tasks = any(model.specs[t].kind.is_pair for t in tasks)
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
    _check_representation_mode(combiner, regularizers, model, f"{where}.combiner")
    freezing = registry.build("freezing", recipe.freezing.name, recipe.freezing.options, model,
                              where=f"{where}.freezing")
    return Strategies(sampler, combiner, regularizers, freezing)


def _check_representation_mode(combiner, regularizers, model: MultiTaskModel, where: str) -> None:
    """`on = "representation"` needs every loss to reach the encoder only through what its head reads."""
    if not combiner.needs_representations:
        return
    if regularizers:
        raise UserError(f"{where}.on: 'representation' takes each task's gradient at its head's input, but a "
                        "regulariser's terms reach the encoder through other inputs; use on = 'parameters'")
    tied = [name for name, spec in model.specs.items() if spec.kind is TaskKind.MLM]
    if tied:
        raise UserError(f"{where}.on: 'representation' cannot serve MLM task(s) {', '.join(tied)}: their "
                        "decoder is the encoder's embedding, reached besides the representation; use on = 'parameters'")


def build_strategies(recipe: Recipe, model: MultiTaskModel, train_sets: dict[str, TaskBatches], seed: int,
                     epochs: int = 1, where: str | None = None) -> Strategies:
    """`make_strategies` for a model and its training batches (a hand-built recipe in Python)."""
    return make_strategies(recipe, model, {t: len(b) for t, b in train_sets.items()},
                           {t: len(b.rows) for t, b in train_sets.items()}, seed, epochs,
                           where or f"recipe '{recipe.name}'")


def comparable_config(config: dict) -> dict:
    """What a run's result depends on, from its record's `config`: not the suite's other seeds, the
    file it came from, its description or the gate's tolerances."""
    suite = {k: v for k, v in config.get("suite", {}).items() if k not in (
        "seeds", "source", "check", "description", "checkpoints", "tune", "front", "tracking")}
    return {"suite": suite, "recipe": config.get("recipe"), "tasks": config.get("tasks")}


def config_hash(config: dict) -> str:
    return gate.config_hash(comparable_config(config))


def run_stem(suite: str, recipe: str, seed: int) -> str:
    """A run's file name: suite-qualified, so that two suites can share an output directory."""
    return f"{suite}.{recipe}-seed{seed}"


class SuiteContext:
    """What every run of a suite shares, assembled once (see the module docstring). Launched by
    torchrun, every rank trains each run together (one shard of every batch); rank 0 alone prepares
    first, logs and writes (bench.parallel)."""

    def __init__(self, suite: Suite, out_dir: Path, log=print, progress: bool = True, predictions: bool = False,
                 prepared: Prepared | None = None):
        self.suite, self.out_dir = suite, Path(out_dir)
        if prepared is not None:  # another context's, of a suite with the same data (the trials of `tune`)
            self.__dict__["prepared"] = prepared
        self.predictions = predictions  # write each task's per-split predictions (best dev epoch)
        device = select_device(suite.train.device)
        self.ranks = parallel.from_environment(device.type)
        self.device = parallel.local_device(self.ranks, device)
        self.log, self.progress = (log, progress) if self.ranks.writes else (_silent, False)
        self.on_step = None  # on_step(recipe, seed, step, total): a worker's progress report (bench.progress)

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

    @property
    def specs(self) -> dict[str, TaskSpec]:
        """The task definitions with their label sets resolved (bench.prepared)."""
        return self.prepared.specs

    def where(self, recipe: Recipe) -> str:
        return f"{self.suite.source} recipes[{recipe.position}]"

    def stem(self, recipe: Recipe, seed: int) -> str:
        return run_stem(self.suite.name, recipe.name, seed)

    def run_config(self, recipe: Recipe) -> dict:
        return {"suite": self.suite.resolved(), "recipe": recipe.resolved(),
                "tasks": {t: spec.resolved() for t, spec in self.specs.items()},
                "max_length": self.prepared.max_length}

    def recipe_by_position(self, position: int) -> Recipe:
        return next(r for r in self.suite.recipes if r.position == position)

    # --- validation: once per suite -------------------------------------------------------------

    def validate(self) -> None:
        """Every recipe of the suite (and its baseline) built as its runs will build it, before any
        data is read: options were validated when the suite was read; here the checks that need
        the run's tasks and model (an option naming a task the recipe lacks, a pair regulariser
        without pair tasks, a pooling the encoder cannot give). The model is an outline (no weights)
        and every task counts one batch."""
        suite = self.suite
        tracking.check_installed(suite.tracking.report_to)  # a missing extra fails before any run starts
        extra = (suite.baseline,) if suite.baseline and suite.baseline not in suite.recipes else ()
        for recipe in suite.recipes + extra:
            tasks = suite.tasks_of(recipe)
            make_strategies(recipe, self.outline(recipe), dict.fromkeys(tasks, 1), dict.fromkeys(tasks, 1), 0,
                            suite.train_for(recipe).epochs, self.where(recipe))

    def outline(self, recipe: Recipe) -> MultiTaskModel:
        """The recipe's model on the meta device, its heads from the declared task definitions: the
        parameters' names that a freezing schedule reads, without building or loading an encoder."""
        suite, train = self.suite, self.suite.train_for(recipe)
        encoder = backbone.encoder_outline(suite.model, suite.tiny_encoder)
        try:
            with torch.device("meta"), warnings.catch_warnings():
                # A head whose label set is inferred from data not read yet has no outputs here.
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                return MultiTaskModel(encoder, [suite.specs[t] for t in suite.tasks_of(recipe)], recipe.pooling,
                                      recipe.pair_head, train.single_head, train.dropout, model_path=None)
        except ValueError as error:  # a pooling the encoder cannot give (last4_mean on 2 layers)
            raise UserError(f"{self.where(recipe)}.pooling: {error}") from None

    # --- one run's parts ------------------------------------------------------------------------

    def build(self, recipe: Recipe, seed: int) -> RunParts:
        """The model, strategies and data of one run (recipe x seed): everything seeded from `seed`."""
        suite, prepared, train = self.suite, self.prepared, self.suite.train_for(recipe)
        seed_everything(seed)
        encoder = backbone.load_encoder(prepared.model_path)
        tasks = suite.tasks_of(recipe)
        model = MultiTaskModel(encoder, [self.specs[t] for t in tasks], recipe.pooling, recipe.pair_head,
                               train.single_head, train.dropout, prepared.model_path)
        mode = model.pair_mode
        generator = torch.Generator().manual_seed(seed)
        train_sets = {}
        for i, task in enumerate(suite.tasks):
            if task not in tasks:
                continue
            spec = self.specs[task]
            # MLM masks are drawn from the run's seed, one generator per MLM task.
            masker = Masker(prepared.tokenizer, seed * 1000 + 500 + i) if spec.kind is TaskKind.MLM else None
            train_sets[task] = TaskBatches(prepared.tokens[mode, task, "train"], spec, train.batch_size,
                                           prepared.pad_id, generator, masker)
        strategies = build_strategies(recipe, model, train_sets, seed, train.epochs, self.where(recipe))
        return RunParts(model, strategies, train_sets,
                        dev_sets={t: prepared.tokens[mode, t, "dev"] for t in tasks},
                        test_sets={t: prepared.tokens[mode, t, "test"] for t in tasks} if suite.test else {},
                        unlabelled_test=prepared.unlabelled_test, pad_id=prepared.pad_id)
